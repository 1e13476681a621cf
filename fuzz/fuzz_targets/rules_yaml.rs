//! `.sluice/rules.yaml` from a commit, alone and against a valid
//! `sluice.yaml`: parsing and validation never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static SPEC: LazyLock<sluice_spec::Spec> = LazyLock::new(|| {
    let text = "service: shop\npipeline:\n  jobs:\n    unit:\n      steps: [{ run: 'true' }]\nenvironments:\n  dev: { listen: 127.0.0.1:0, deploy: auto }\n  prod: { listen: 127.0.0.1:0, from: dev }\n";
    sluice_spec::parse("sluice.yaml", text).expect("a valid spec")
});

fuzz_target!(|text: &str| {
    for spec in [None, Some(&*SPEC)] {
        if let Err(errors) = sluice_spec::parse_rules(".sluice/rules.yaml", text, spec) {
            let _ = errors.to_string();
        }
    }
});
