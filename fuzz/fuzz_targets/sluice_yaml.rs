//! `sluice.yaml` from a commit: parsing and validation never panic, and an
//! error always renders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = sluice_spec::parse("sluice.yaml", text) {
        let _ = errors.to_string();
    }
});
