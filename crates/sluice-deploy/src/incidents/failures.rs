//! What failed most lately at an environment's entry points: the failed
//! requests (5xx) among the last lines of an access log, by `METHOD /path`,
//! counted on the server for its own entry point and on each agent's host
//! for its own, and merged when an incident opens.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How many of an access log's last lines are read.
const LINES: usize = 5000;
/// How many requests a host reports, the most failed first.
pub const MAX_REPORTED: usize = 20;
/// The longest `METHOD /path` a host may report.
pub const MAX_REQUEST_CHARS: usize = 300;

/// Failed requests of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureCount {
    /// `METHOD /path`, without the query.
    pub request: String,
    pub count: u64,
}

/// The failed requests among the last lines of `tail` (an access log's
/// end, JSON lines), the most failed first.
pub fn count(tail: &str) -> Vec<FailureCount> {
    let failed: Vec<String> = tail.lines().rev().take(LINES).filter_map(failed).collect();
    rank(failed.iter().map(String::as_str))
}

/// The request an access log's line records, `METHOD /path`, when it
/// failed (5xx).
pub fn failed(line: &str) -> Option<String> {
    let entry = serde_json::from_str::<serde_json::Value>(line).ok()?;
    if entry["status"].as_u64().is_none_or(|s| s < 500) {
        return None;
    }
    let path = entry["path"].as_str().unwrap_or("?");
    let path = path.split('?').next().unwrap_or(path);
    Some(format!(
        "{} {path}",
        entry["method"].as_str().unwrap_or("?")
    ))
}

/// Failed requests counted by kind, the most failed first.
pub fn rank<'a>(failed: impl Iterator<Item = &'a str>) -> Vec<FailureCount> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for request in failed {
        *counts.entry(request.to_string()).or_default() += 1;
    }
    let mut ranked: Vec<FailureCount> = counts
        .into_iter()
        .map(|(request, count)| FailureCount { request, count })
        .collect();
    ranked.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.request.cmp(&b.request))
    });
    ranked
}

/// The three requests that failed most over every count given:
/// `GET /checkout (57 of 60 failures)`.
pub fn worst(counts: &[Vec<FailureCount>]) -> Vec<String> {
    let mut merged: BTreeMap<&str, u64> = BTreeMap::new();
    for failure in counts.iter().flatten() {
        *merged.entry(&failure.request).or_default() += failure.count;
    }
    let total: u64 = merged.values().sum();
    let mut ranked: Vec<(&str, u64)> = merged.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(3)
        .map(|(request, n)| format!("{request} ({n} of {total} failures)"))
        .collect()
}

/// How long a host keeps a failed request in mind.
const KEPT_FOR: Duration = Duration::from_secs(15 * 60);
/// The most of a log read at once: past it, the older lines are skipped.
const MAX_READ: u64 = 1 << 20;

/// Follows an access log as it grows (a host's), keeping the requests that
/// failed in the last 15 minutes (at most [`LINES`]): each report reads
/// what was written since the last, not the log's end again, so what it
/// sends is never older than the report.
pub struct FailureTail {
    path: PathBuf,
    /// Where the next read starts.
    offset: u64,
    recent: VecDeque<(Instant, String)>,
}

impl FailureTail {
    /// Follows `path` from its last MiB.
    pub fn new(path: &Path) -> FailureTail {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        FailureTail {
            path: path.to_path_buf(),
            offset: len.saturating_sub(MAX_READ),
            recent: VecDeque::new(),
        }
    }

    /// What failed most lately, counting what was written since the last call.
    pub fn read(&mut self) -> Vec<FailureCount> {
        let now = Instant::now();
        for request in self.new_lines().lines().filter_map(failed) {
            self.recent.push_back((now, request));
        }
        while self.recent.len() > LINES
            || self
                .recent
                .front()
                .is_some_and(|(at, _)| now - *at > KEPT_FOR)
        {
            self.recent.pop_front();
        }
        rank(self.recent.iter().map(|(_, r)| r.as_str()))
    }

    /// The whole lines written since the last read (at most the last MiB);
    /// a log rotated meanwhile is read from its start.
    fn new_lines(&mut self) -> String {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return String::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0;
        }
        let skipped = len - self.offset > MAX_READ;
        if skipped {
            self.offset = len - MAX_READ;
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file
                .take(len - self.offset)
                .read_to_end(&mut bytes)
                .is_err()
        {
            return String::new();
        }
        // A line still being written waits for the next read.
        let whole = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        self.offset += whole as u64;
        let mut text = String::from_utf8_lossy(&bytes[..whole]).into_owned();
        if skipped {
            // Cut mid-line: the first is not whole.
            text = text
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(method: &str, path: &str, status: u16) -> String {
        serde_json::json!({ "method": method, "path": path, "status": status }).to_string()
    }

    #[test]
    fn failures_are_counted_by_request_and_merged_over_hosts() {
        let server: Vec<String> = [
            line("POST", "/checkout?cart=1", 500),
            line("POST", "/checkout", 502),
            line("GET", "/", 200),
            line("GET", "/cart", 503),
            "not json".to_string(),
        ]
        .into();
        let here = count(&server.join("\n"));
        assert_eq!(
            here,
            [
                FailureCount {
                    request: "POST /checkout".into(),
                    count: 2
                },
                FailureCount {
                    request: "GET /cart".into(),
                    count: 1
                },
            ]
        );
        let host = count(&[line("GET", "/cart", 500), line("GET", "/cart", 500)].join("\n"));
        assert_eq!(
            worst(&[here, host]),
            [
                "GET /cart (3 of 5 failures)",
                "POST /checkout (2 of 5 failures)"
            ]
        );
        assert!(worst(&[]).is_empty());
    }

    #[test]
    fn a_followed_log_is_read_as_it_grows_and_again_after_a_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let append = |lines: &[String], partial: &str| {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            for line in lines {
                writeln!(file, "{line}").unwrap();
            }
            write!(file, "{partial}").unwrap();
        };
        append(&[line("GET", "/old", 500)], "");
        let mut tail = FailureTail::new(&path);
        assert_eq!(tail.read()[0].request, "GET /old", "its last MiB at first");
        // Half a line: counted once it is whole.
        let half = line("POST", "/pay", 500);
        let (first, second) = half.split_at(10);
        append(&[line("GET", "/", 200)], first);
        assert_eq!(tail.read().len(), 1);
        append(&[], &format!("{second}\n"));
        assert_eq!(
            tail.read(),
            [
                FailureCount {
                    request: "GET /old".into(),
                    count: 1
                },
                FailureCount {
                    request: "POST /pay".into(),
                    count: 1
                },
            ]
        );
        // Rotated: the new file from its start.
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        append(&[line("GET", "/new", 503)], "");
        let counted: Vec<String> = tail.read().into_iter().map(|f| f.request).collect();
        assert!(counted.contains(&"GET /new".to_string()), "{counted:?}");
    }
}
