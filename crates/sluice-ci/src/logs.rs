//! The log sink of one run: masks secrets, numbers the lines, streams them to
//! listeners at once and stores them in chunks a moment later, keeping at
//! most the last [`LogSink::start`]'s `cap` bytes of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{LogLine, Store, now_ms};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::Event;

/// How long a line may wait in memory before it is stored.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const CHUNK_LINES: usize = 256;
/// What a run keeps of its log by default: the last 16 MiB.
pub const DEFAULT_CAP: u64 = 16 << 20;

/// The chunks stored so far, oldest first, so that the oldest can go once
/// the log is over its cap.
struct Stored {
    chunks: VecDeque<(i64, u64)>,
    bytes: u64,
    cap: u64,
    /// The last line cut, once any was.
    cut_through: Option<i64>,
}

impl Stored {
    fn new(cap: u64) -> Self {
        Stored {
            chunks: VecDeque::new(),
            bytes: 0,
            cap,
            cut_through: None,
        }
    }

    fn add(&mut self, last_seq: i64, bytes: u64) {
        self.chunks.push_back((last_seq, bytes));
        self.bytes += bytes;
    }

    /// The last line of the oldest chunks to drop to be under the cap again,
    /// if any must go (never the newest chunk).
    fn over_cap(&mut self) -> Option<i64> {
        let mut through = None;
        while self.bytes > self.cap && self.chunks.len() > 1 {
            let (last_seq, bytes) = self.chunks.pop_front().expect("more than one");
            self.bytes -= bytes;
            through = Some(last_seq);
        }
        if through.is_some() {
            self.cut_through = through;
        }
        through
    }
}

fn size(line: &LogLine) -> u64 {
    (line.line.len() + line.job.len() + 48) as u64
}

pub struct LogSink {
    tx: mpsc::UnboundedSender<(Arc<str>, i64, &'static str, String)>,
    task: JoinHandle<()>,
}

/// Writes lines for one job and step of the run.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::UnboundedSender<(Arc<str>, i64, &'static str, String)>,
    job: Arc<str>,
    step: i64,
}

/// A line as a [`LogWriter`] sends it: job, step, stream, text.
pub type LogItem = (Arc<str>, i64, &'static str, String);

impl LogWriter {
    /// A writer whose lines come out of the receiver, unmasked and
    /// unstored: an agent forwards them to its server.
    pub fn channel(job: &str) -> (LogWriter, mpsc::UnboundedReceiver<LogItem>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = LogWriter {
            tx,
            job: job.into(),
            step: -1,
        };
        (writer, rx)
    }

    pub fn line(&self, stream: &'static str, text: impl Into<String>) {
        let _ = self
            .tx
            .send((self.job.clone(), self.step, stream, text.into()));
    }

    /// The same job, another step.
    pub fn for_step(&self, step: i64) -> LogWriter {
        LogWriter {
            tx: self.tx.clone(),
            job: self.job.clone(),
            step,
        }
    }

    /// The executor's own words, shown apart from the step's output.
    pub fn note(&self, text: impl Into<String>) {
        self.line("sluice", text);
    }
}

impl LogSink {
    pub fn start(
        store: Store,
        run_id: i64,
        secrets: Vec<String>,
        events: broadcast::Sender<Event>,
        cap: u64,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<str>, i64, &'static str, String)>();
        let masker = Masker::new(secrets);
        let task = tokio::spawn(async move {
            let mut seq = store
                .logs(run_id, -1)
                .await
                .ok()
                .and_then(|l| l.last().map(|l| l.seq + 1))
                .unwrap_or(0);
            let mut pending: Vec<LogLine> = Vec::new();
            let mut stored = Stored::new(cap);
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                let flush_now = tokio::select! {
                    message = rx.recv() => match message {
                        Some((job, step, stream, text)) => {
                            let line = LogLine { seq, at: now_ms(), job: job.to_string(), step, stream: stream.to_string(), line: masker.mask(&text) };
                            seq += 1;
                            let _ = events.send(Event::Log { run_id, line: line.clone() });
                            pending.push(line);
                            pending.len() >= CHUNK_LINES
                        }
                        None => break,
                    },
                    _ = tick.tick() => true,
                };
                if flush_now {
                    flush(&store, run_id, &mut pending, &mut stored).await;
                    keep_under_cap(&store, run_id, &mut stored).await;
                }
            }
            flush(&store, run_id, &mut pending, &mut stored).await;
            keep_under_cap(&store, run_id, &mut stored).await;
            // Said last, so that it is never cut itself.
            if let Some(note) = cut_note(&stored, seq) {
                let _ = events.send(Event::Log {
                    run_id,
                    line: note.clone(),
                });
                pending.push(note);
                flush(&store, run_id, &mut pending, &mut stored).await;
            }
        });
        LogSink { tx, task }
    }

    pub fn writer(&self, job: &str, step: i64) -> LogWriter {
        LogWriter {
            tx: self.tx.clone(),
            job: job.into(),
            step,
        }
    }

    /// Waits until every line written so far is stored. Writers must be dropped first.
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

async fn flush(store: &Store, run_id: i64, pending: &mut Vec<LogLine>, stored: &mut Stored) {
    let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
        return;
    };
    let bytes = pending.iter().map(size).sum();
    match store.append_log_chunk(run_id, pending).await {
        Ok(()) => {
            stored.add(last.seq, bytes);
            // Other servers' streams read the lines from the store.
            let notice = sluice_store::Notice::Logs {
                run_id,
                from: first.seq,
                through: last.seq,
            };
            store.tell(&notice).await;
        }
        Err(e) => tracing::error!(run_id, error = %e, "could not store log lines"),
    }
    pending.clear();
}

/// Drops the oldest stored chunks while the log is over its cap.
async fn keep_under_cap(store: &Store, run_id: i64, stored: &mut Stored) {
    if let Some(through) = stored.over_cap()
        && let Err(e) = store.drop_log_chunks(run_id, through).await
    {
        tracing::error!(run_id, error = %e, "could not drop old log lines");
    }
}

/// The line (numbered `seq`) that says the log was cut, if it was.
fn cut_note(stored: &Stored, seq: i64) -> Option<LogLine> {
    let through = stored.cut_through?;
    Some(LogLine {
        seq,
        at: now_ms(),
        job: String::new(),
        step: -1,
        stream: "sluice".into(),
        line: format!(
            "the log is longer than its cap of {}: its first {} lines were cut, its end is kept",
            if stored.cap >= 1 << 20 {
                format!("{} MiB", stored.cap >> 20)
            } else {
                format!("{} KiB", stored.cap >> 10)
            },
            through + 1
        ),
    })
}

/// Replaces every secret value with `***`.
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(secrets: Vec<String>) -> Self {
        // A multi-line secret is masked line by line; longer ones first so a
        // secret that contains another is masked whole. Under four
        // characters a value is not masked: every `a` of a log would go.
        let mut secrets: Vec<String> = secrets
            .iter()
            .flat_map(|s| {
                s.lines()
                    .map(str::trim)
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|s| s.chars().count() >= 4)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_each_line_of_a_secret() {
        let m = Masker::new(vec![
            "hunter2".into(),
            "line one\nline two".into(),
            "".into(),
        ]);
        assert_eq!(m.mask("pw=hunter2 again hunter2"), "pw=*** again ***");
        assert_eq!(m.mask("got line two"), "got ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[tokio::test]
    async fn a_log_over_its_cap_keeps_its_end_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let (events, _) = broadcast::channel(16);
        let sink = LogSink::start(store.clone(), 1, vec![], events, 64 << 10);
        let writer = sink.writer("flood", 0);
        for i in 0..5_000 {
            writer.line("stdout", format!("{i:06} {}", "x".repeat(100)));
        }
        drop(writer);
        sink.close().await;
        let lines = store.logs(1, -1).await.unwrap();
        let kept: usize = lines.iter().map(|l| l.line.len()).sum();
        assert!(kept <= (64 << 10) + 256 * 120, "kept {kept} bytes");
        let last_output = lines.iter().rfind(|l| l.stream == "stdout").unwrap();
        assert!(last_output.line.starts_with("004999 "), "the end is kept");
        assert!(
            !lines.iter().any(|l| l.line.starts_with("000000 ")),
            "the beginning is cut"
        );
        let said: Vec<_> = lines
            .iter()
            .filter(|l| l.line.contains("lines were cut, its end is kept"))
            .collect();
        assert_eq!(said.len(), 1, "said once: {said:?}");
        assert!(said[0].line.contains("64 KiB"));

        let page = store.logs_page(1, -1, 100).await.unwrap();
        assert_eq!(page.len(), 100);
        assert_eq!(page[0].seq, lines[0].seq);
        let next = store.logs_page(1, page[99].seq, 100).await.unwrap();
        assert_eq!(next[0].seq, lines[100].seq, "pages follow each other");
        let tail = store.log_tail(1, 10).await.unwrap();
        assert_eq!(tail, lines[lines.len() - 10..]);
    }

    #[test]
    fn longer_secrets_win() {
        let m = Masker::new(vec!["abcd".into(), "abcdef".into(), "ab".into()]);
        assert_eq!(m.mask("xabcdefx"), "x***x");
        assert_eq!(m.mask("ab abcd"), "ab ***", "too short to mask");
    }
}
