//! The log sink of one run: masks secrets, numbers the lines, streams them to
//! listeners at once and stores them in chunks a moment later.

use std::sync::Arc;
use std::time::Duration;

use sluice_store::{LogLine, Store, now_ms};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::Event;

/// How long a line may wait in memory before it is stored.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const CHUNK_LINES: usize = 256;

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

impl LogWriter {
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
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    message = rx.recv() => match message {
                        Some((job, step, stream, text)) => {
                            let line = LogLine { seq, at: now_ms(), job: job.to_string(), step, stream: stream.to_string(), line: masker.mask(&text) };
                            seq += 1;
                            let _ = events.send(Event::Log { run_id, line: line.clone() });
                            pending.push(line);
                            if pending.len() >= CHUNK_LINES {
                                flush(&store, run_id, &mut pending).await;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => flush(&store, run_id, &mut pending).await,
                }
            }
            flush(&store, run_id, &mut pending).await;
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

async fn flush(store: &Store, run_id: i64, pending: &mut Vec<LogLine>) {
    if pending.is_empty() {
        return;
    }
    if let Err(e) = store.append_log_chunk(run_id, pending).await {
        tracing::error!(run_id, error = %e, "could not store log lines");
    }
    pending.clear();
}

/// Replaces every secret value with `***`.
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(secrets: Vec<String>) -> Self {
        // A multi-line secret is masked line by line; longer ones first so a
        // secret that contains another is masked whole.
        let mut secrets: Vec<String> = secrets
            .iter()
            .flat_map(|s| {
                s.lines()
                    .map(str::trim)
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
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

    #[test]
    fn longer_secrets_win() {
        let m = Masker::new(vec!["abc".into(), "abcdef".into()]);
        assert_eq!(m.mask("xabcdefx"), "x***x");
    }
}
