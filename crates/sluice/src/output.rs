//! How the CLI shows things to people: times, durations, tables.

use std::io::Write;

use chrono::{Local, TimeZone};
use serde_json::Value;

/// `2026-11-26 14:03:07` in local time, from milliseconds since the epoch.
pub fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(|ms| Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// How long between two millisecond times; `-` when either is missing.
pub fn duration(start: &Value, end: &Value) -> String {
    match (start.as_i64(), end.as_i64()) {
        (Some(a), Some(b)) => {
            let ms = (b - a).max(0) as u64;
            if ms < 1000 {
                format!("{ms}ms")
            } else {
                format!("{:.1}s", ms as f64 / 1000.0)
            }
        }
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

/// Prints a value as indented JSON, for `--json`.
pub fn print_json(value: &Value) -> anyhow::Result<std::process::ExitCode> {
    crate::say!("{}", serde_json::to_string_pretty(value)?);
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn short_sha(value: &Value) -> String {
    value
        .as_str()
        .map(|s| s.chars().take(10).collect())
        .unwrap_or_default()
}

/// One table row per element of a JSON array (none for anything else).
pub fn rows_of(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().into_iter().flatten().map(row).collect()
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let parts: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        say(format_args!("{}", parts.join("  ").trim_end()));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Prints a line to standard output; a closed pipe (`sluice runs | head`) ends the program quietly.
pub fn say(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! say {
    () => { $crate::output::say(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::say(format_args!($($arg)*)) };
}
