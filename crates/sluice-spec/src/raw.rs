//! The file as written: serde structs with `deny_unknown_fields` and source
//! locations on every value that a semantic check may need to point at.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub service: Spanned<String>,
    pub mainline: Option<Spanned<String>>,
    pub pipeline: RawPipeline,
    pub run: Option<RawRun>,
    #[serde(default)]
    pub environments: Entries<RawEnvironment>,
    #[serde(default)]
    pub notify: Vec<Spanned<RawNotify>>,
}

/// One `notify:` route: which events, where, to which channels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub on: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    pub to: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub jobs: Spanned<Entries<RawJob>>,
    pub artifact: Option<RawArtifact>,
    pub changes: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArtifact {
    pub paths: Vec<Spanned<String>>,
    pub from: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    #[serde(default)]
    pub needs: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: Entries<Scalar>,
    pub timeout: Option<Spanned<String>>,
    pub steps: Option<Spanned<Vec<RawStep>>>,
    #[serde(rename = "if")]
    pub condition: Option<Spanned<String>>,
    #[serde(default)]
    pub branches: Vec<Spanned<String>>,
    pub runs_on: Option<Entries<Scalar>>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub lost: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Option<String>,
    pub run: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub command: Spanned<String>,
    pub ready_timeout: Option<Spanned<String>>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub config_files: Vec<RawConfigFile>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    pub ports: Option<Spanned<String>>,
    pub memory: Option<Spanned<Scalar>>,
    pub cores: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy: Option<Spanned<u32>>,
    pub unhealthy: Option<Spanned<u32>>,
    pub incident_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfigFile {
    pub template: Spanned<String>,
    pub to: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub from: Option<Spanned<String>>,
    pub deploy: Option<Spanned<RawDeploy>>,
    pub instances: Option<Spanned<u32>>,
    pub listen: Spanned<RawListen>,
    #[serde(default)]
    pub config: Entries<Scalar>,
    pub data: Option<RawData>,
    pub strategy: Option<Spanned<RawStrategy>>,
    pub hosts: Option<Spanned<RawHosts>>,
}

/// `hosts: { labels: { KEY: VALUE }, spread: BOOL }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHosts {
    #[serde(default)]
    pub labels: Entries<Scalar>,
    pub spread: Option<bool>,
}

/// `listen: ADDR`, or `listen: { address: ADDR, tls: …, redirect_from: ADDR }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawListen {
    Address(String),
    Full(Box<RawListenFull>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenFull {
    pub address: String,
    pub tls: Option<RawTls>,
    pub redirect_from: Option<String>,
    pub limits: Option<RawLimits>,
}

/// What clients of the entry point may take, and instances to answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub answer_timeout: Option<String>,
    pub max_body: Option<Scalar>,
    pub max_header_bytes: Option<Scalar>,
    pub max_headers: Option<u32>,
}

/// `{ acme: … }`, one certificate and key, or several (chosen by SNI).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTls {
    Acme(RawAcmeTls),
    One(RawCertPair),
    Many(Vec<RawCertPair>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcmeTls {
    pub acme: RawAcme,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: Option<String>,
    pub ca: Option<String>,
    pub challenge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub seed: Option<Spanned<String>>,
    pub copy_from: Option<Spanned<String>>,
    pub scrub: Option<Spanned<String>>,
    pub snapshots: Option<Spanned<u32>>,
    pub seed_timeout: Option<Spanned<String>>,
}

/// `deploy: auto`, `deploy: manual`, or a mapping of gates.
#[derive(Debug)]
pub enum RawDeploy {
    Word(String),
    Gates(RawGates),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGates {
    pub auto: Option<bool>,
    pub approvals: Option<Spanned<u32>>,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub soak: Option<Spanned<String>>,
    #[serde(default)]
    pub freeze: Vec<Spanned<String>>,
    #[serde(default)]
    pub require_jobs: Vec<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawDeploy {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeployVisitor;
        impl<'de> Visitor<'de> for DeployVisitor {
            type Value = RawDeploy;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto`, `manual`, or a mapping of gates (approvals, approvers, soak, freeze, require_jobs)")
            }
            fn visit_str<E: de::Error>(self, word: &str) -> Result<RawDeploy, E> {
                Ok(RawDeploy::Word(word.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDeploy, A::Error> {
                RawGates::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawDeploy::Gates)
            }
        }
        deserializer.deserialize_any(DeployVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawStrategy {
    Rolling,
    BlueGreen,
    Ab(Box<RawAb>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAb {
    pub steps: Option<Spanned<Vec<Spanned<i64>>>>,
    pub min_requests: Option<u64>,
    pub min_duration: Option<Spanned<String>>,
    pub max_step: Option<Spanned<String>>,
    pub sticky: Option<Spanned<String>>,
    pub metrics: Option<Vec<Spanned<String>>>,
    pub allow_force: Option<bool>,
    pub min_effect: Option<Spanned<RawMinEffect>>,
    pub warm_up_requests: Option<u64>,
    pub data: Option<Spanned<String>>,
    pub goals: Option<Vec<Spanned<RawGoal>>>,
    pub mode: Option<Spanned<String>>,
    pub test: Option<Spanned<RawAbTest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoal {
    pub name: String,
    pub request: Option<String>,
    pub status: Option<String>,
    pub value: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbTest {
    pub split: Option<i64>,
    pub min_effect: Option<String>,
    pub max_duration: Option<String>,
    pub promote: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMinEffect {
    pub percent: Option<f64>,
    pub ms: Option<f64>,
}

/// A mapping kept in file order with the location of each key.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// A scalar that becomes a string: `LOG_LEVEL: debug`, `WORKERS: 4`, `DEBUG: true`.
#[derive(Debug)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Reads the text into [`RawSpec`]; a syntax or shape error stops here with one diagnostic.
pub fn parse(file: &str, text: &str) -> Result<RawSpec, Diagnostics> {
    from_yaml(
        file,
        text,
        "start with `service: NAME` and a `pipeline:` with at least one job; `sluice init` writes one",
    )
}

/// Deserializes a YAML file, an error pointing at where the parser stopped;
/// `empty_help` says what to write in a file that has nothing in it.
pub fn from_yaml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    empty_help: &str,
) -> Result<T, Diagnostics> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        return Err(Diagnostics::one(Diagnostic::at(
            file,
            text,
            1,
            1,
            0,
            "the file is empty",
            Some(empty_help.into()),
        )));
    }
    // The parser stops at the first unknown field or wrong type: each one is
    // recorded, its line (and the block under it) blanked, and the text read
    // again, so that one `validate` shows every such error at once.
    let mut current: Vec<String> = text.lines().map(str::to_string).collect();
    let mut found: Vec<Diagnostic> = Vec::new();
    let mut blanked = std::collections::HashSet::new();
    loop {
        let error = match serde_saphyr::from_str::<T>(&current.join("\n")) {
            Ok(value) if found.is_empty() => return Ok(value),
            Ok(_) => return Err(Diagnostics(found)),
            Err(error) => error,
        };
        let (line, column, len) = error
            .location()
            .map(|l| {
                (
                    l.line() as usize,
                    l.column() as usize,
                    l.span().len() as usize,
                )
            })
            .unwrap_or((1, 1, 0));
        let bare = error.without_snippet().to_string();
        let message = bare
            .rsplit_once(" at line ")
            .map_or(bare.as_str(), |(message, _)| message);
        // A field missing, or a mapping left empty, only because an error's
        // block was blanked is no error of the file.
        let emptied = message.starts_with("expected") && blanked.iter().any(|b| *b > line);
        let consequence = !found.is_empty() && (message.starts_with("missing field") || emptied);
        if consequence || !blanked.insert(line) || found.len() >= MAX_SHAPE_ERRORS {
            return Err(Diagnostics(found));
        }
        let (message, help) = explain(message);
        found.push(Diagnostic::at(
            file, text, line, column, len, &message, help,
        ));
        if syntax_error(&message) || !blank_block(&mut current, line) {
            return Err(Diagnostics(found));
        }
    }
}

/// How many shape errors one reading reports.
const MAX_SHAPE_ERRORS: usize = 50;

/// Blanks line `line` (1-based) and the lines indented deeper after it;
/// false when there is no such line.
fn blank_block(lines: &mut [String], line: usize) -> bool {
    let Some(first) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return false;
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let depth = indent(&lines[first]);
    lines[first].clear();
    for next in lines.iter_mut().skip(first + 1) {
        if !next.trim().is_empty() && indent(next) <= depth {
            break;
        }
        next.clear();
    }
    true
}

fn syntax_error(message: &str) -> bool {
    message.starts_with("YAML syntax:") || message.contains("defined twice")
}

/// Turns the parser's words into ours where they name YAML internals.
fn explain(message: &str) -> (String, Option<String>) {
    let replaced = [
        (
            "expected sequence start",
            "expected a list",
            "write `- item` lines or `[a, b]`",
        ),
        (
            "expected mapping start",
            "expected a mapping",
            "write `key: value` lines under this key",
        ),
        (
            "expected string scalar",
            "expected a text value",
            "write a plain or quoted string here",
        ),
    ];
    for (theirs, ours, help) in replaced {
        if message.starts_with(theirs) {
            return (ours.to_string(), Some(help.to_string()));
        }
    }
    for kind in ["u8", "u16", "u32", "u64", "i32", "i64", "usize"] {
        if message.starts_with(&format!("invalid {kind}")) {
            let unsigned = kind.starts_with('u');
            return (
                format!(
                    "expected a whole number{}",
                    if unsigned { " of 0 or more" } else { "" }
                ),
                Some("write digits only, such as 2".into()),
            );
        }
    }
    if message.starts_with("missing field") {
        return (
            message.to_string(),
            Some("add the field; docs/sluice-yaml.md lists every field".into()),
        );
    }
    if message.starts_with("duplicate mapping key") {
        let key = message.trim_start_matches("duplicate mapping key: ");
        let key = key.split(", set DuplicateKeyPolicy").next().unwrap_or(key);
        return (
            format!("`{key}` is defined twice"),
            Some("names must be unique within a mapping; rename or merge one of them".into()),
        );
    }
    let syntax = [
        "illegal placement",
        "did not find expected",
        "unexpected end",
        "found character",
        "mapping values are not allowed",
        "while scanning",
    ];
    if syntax.iter().any(|s| message.contains(s)) {
        return (format!("YAML syntax: {message}"), Some("look for an unclosed bracket or quote, or a line indented differently from its neighbours".into()));
    }
    (message.to_string(), None)
}
