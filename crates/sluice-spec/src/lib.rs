//! `sluice.yaml`, the service definition: its typed model, parsing, validation
//! and the rendering of errors with `file:line:column` and a caret.
//!
//! Parsing happens in two steps: [`raw`] mirrors the file with serde and
//! `deny_unknown_fields`; [`validate`] turns it into the [`model`], which
//! cannot be wrong, collecting every semantic error instead of stopping at the
//! first.

mod cron;
mod diagnostic;
mod duration;
mod layout;
mod model;
mod notify;
pub mod paths;
mod raw;
mod rules;
mod validate;

pub use validate::parse_goal;

pub use cron::FreezeWindow;
pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::{format_duration, parse_duration};
pub use layout::{Layout, artifact_in};
pub use model::*;
pub use notify::{EVENT_KINDS, EventPattern, NotifyRoute};
pub use rules::{ExtraCheck, RULES_FILE, Rule, RuleSpec, parse_rules};

/// The file name that a repository keeps its service definition under.
pub const SPEC_FILE: &str = "sluice.yaml";

/// Parses and validates a `sluice.yaml` text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Spec, Diagnostics> {
    let raw = raw::parse(file, text)?;
    validate::validate(file, text, raw)
}
