//! A webhook's body and signature header from anyone: checking and parsing
//! never panic, and whatever becomes a change has a commit id git can take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_ci::webhook::{Parsed, parse, signature_is_valid};

fuzz_target!(|input: (u8, &str, &[u8])| {
    let (event, header, body) = input;
    let _ = signature_is_valid("secret", body, Some(header));
    let event = ["push", "pull_request", "ping", "issues"][usize::from(event % 4)];
    if let Ok(Parsed::Change(change)) = parse(event, body) {
        assert!(sluice_ci::git::check_sha(&change.sha).is_ok(), "{}", change.sha);
        assert!(change.title.chars().count() <= 200);
        assert!(!change.ref_name.chars().any(char::is_control));
    }
});
