//! Live events on a server standing by: what the server running CI tells
//! over PostgreSQL ([`Notice`]), turned back into the CI events that its
//! live streams show, a log's lines read from the store where they are
//! already kept. One `NOTIFY` a run state or a stored piece of a log fans
//! out to every server, each serving its own clients' streams.

use std::collections::HashMap;

use sluice_ci::Event;
use sluice_store::{Notice, Store};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Runs whose log is being followed at once; past it, the oldest is
/// forgotten (its next piece starts from that piece's first line).
const MAX_FOLLOWED: usize = 1024;

/// Starts relaying `store`'s notices until `stop`; returns where the
/// events go out.
pub fn start(store: Store, stop: CancellationToken) -> broadcast::Sender<Event> {
    let (events, _) = broadcast::channel(4096);
    let notices = store.notices();
    let out = events.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = relay(store, notices, out) => {}
        }
    });
    events
}

/// Each notice as events, in the order heard, until the notices end.
async fn relay(
    store: Store,
    mut notices: broadcast::Receiver<Notice>,
    events: broadcast::Sender<Event>,
) {
    let mut logs = Followed::default();
    loop {
        match notices.recv().await {
            // With no stream open (the server holding the controllers hears
            // its own notices too), nothing is read.
            Ok(Notice::Logs {
                run_id, through, ..
            }) if events.receiver_count() == 0 => {
                logs.read(run_id, through);
            }
            Ok(Notice::Logs { run_id, from, .. }) => {
                let after = logs.after(run_id, from);
                let last = send_lines(&store, &events, run_id, after).await;
                logs.read(run_id, last);
            }
            Ok(Notice::Run { run_id, status }) => {
                // Its last lines first: a stream ends at the run's end.
                if status.is_finished()
                    && let Some(after) = logs.end(run_id)
                {
                    send_lines(&store, &events, run_id, after).await;
                }
                let _ = events.send(Event::Run { run_id, status });
            }
            // Missed notices: each followed log catches up from the store.
            Err(RecvError::Lagged(_)) => {
                for (run_id, after) in logs.all() {
                    let last = send_lines(&store, &events, run_id, after).await;
                    logs.read(run_id, last);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Sends the lines of run `run_id`'s log after `after`; returns the last sent.
async fn send_lines(
    store: &Store,
    events: &broadcast::Sender<Event>,
    run_id: i64,
    after: i64,
) -> i64 {
    let mut last = after;
    for line in store.logs(run_id, after).await.unwrap_or_default() {
        last = last.max(line.seq);
        let _ = events.send(Event::Log { run_id, line });
    }
    last
}

/// How far each followed run's log was relayed.
#[derive(Default)]
struct Followed {
    last: HashMap<i64, i64>,
}

impl Followed {
    /// Where to read run `run_id`'s log from, given a piece from `from` on.
    fn after(&self, run_id: i64, from: i64) -> i64 {
        self.last.get(&run_id).copied().unwrap_or(from - 1)
    }

    fn read(&mut self, run_id: i64, last: i64) {
        if self.last.len() >= MAX_FOLLOWED && !self.last.contains_key(&run_id) {
            let oldest = self.last.keys().min().copied();
            oldest.map(|run| self.last.remove(&run));
        }
        self.last.insert(run_id, last);
    }

    /// Stops following a run that ended; where its log was relayed to.
    fn end(&mut self, run_id: i64) -> Option<i64> {
        self.last.remove(&run_id)
    }

    fn all(&self) -> Vec<(i64, i64)> {
        self.last.iter().map(|(run, last)| (*run, *last)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::{LogLine, RunStatus};

    fn line(seq: i64) -> LogLine {
        LogLine {
            seq,
            at: 0,
            job: "test".into(),
            step: 0,
            stream: "stdout".into(),
            line: format!("line {seq}"),
        }
    }

    /// What a stream on the standby would show, as `kind seq` or `run STATUS`.
    fn shown(events: &mut broadcast::Receiver<Event>) -> Vec<String> {
        let mut shown = Vec::new();
        while let Ok(event) = events.try_recv() {
            shown.push(match event {
                Event::Log { line, .. } => format!("line {}", line.seq),
                Event::Run { status, .. } => format!("run {status}"),
            });
        }
        shown
    }

    #[tokio::test]
    async fn notices_become_the_events_the_server_running_ci_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let run = 7;
        let (tell, notices) = broadcast::channel(16);
        let (events, mut seen) = broadcast::channel(64);
        let relaying = tokio::spawn(relay(store.clone(), notices, events));

        store
            .append_log_chunk(run, &[line(0), line(1)])
            .await
            .unwrap();
        tell.send(Notice::Logs {
            run_id: run,
            from: 0,
            through: 1,
        })
        .unwrap();
        // A piece stored before its notice comes is read with the next one.
        store.append_log_chunk(run, &[line(2)]).await.unwrap();
        store.append_log_chunk(run, &[line(3)]).await.unwrap();
        tell.send(Notice::Logs {
            run_id: run,
            from: 3,
            through: 3,
        })
        .unwrap();
        tell.send(Notice::Logs {
            run_id: run,
            from: 2,
            through: 2,
        })
        .unwrap();
        // The last piece's notice is lost: the run's end reads it.
        store.append_log_chunk(run, &[line(4)]).await.unwrap();
        tell.send(Notice::Run {
            run_id: run,
            status: RunStatus::Success,
        })
        .unwrap();
        drop(tell);
        relaying.await.unwrap();
        assert_eq!(
            shown(&mut seen),
            [
                "line 0",
                "line 1",
                "line 2",
                "line 3",
                "line 4",
                "run success"
            ]
        );
    }

    #[tokio::test]
    async fn a_log_first_heard_midway_starts_at_that_piece() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let run = 7;
        store
            .append_log_chunk(run, &[line(0), line(1), line(2)])
            .await
            .unwrap();
        let (tell, notices) = broadcast::channel(16);
        let (events, mut seen) = broadcast::channel(64);
        let relaying = tokio::spawn(relay(store.clone(), notices, events));
        tell.send(Notice::Logs {
            run_id: run,
            from: 2,
            through: 2,
        })
        .unwrap();
        drop(tell);
        relaying.await.unwrap();
        assert_eq!(shown(&mut seen), ["line 2"]);
    }

    #[test]
    fn following_is_bounded_and_forgets_the_oldest_run() {
        let mut followed = Followed::default();
        for run in 0..MAX_FOLLOWED as i64 + 1 {
            followed.read(run, 5);
        }
        assert_eq!(followed.last.len(), MAX_FOLLOWED);
        assert_eq!(followed.after(0, 9), 8, "run 0 was forgotten");
        assert_eq!(followed.after(1, 9), 5);
        assert_eq!(followed.end(1), Some(5));
        assert_eq!(followed.end(1), None);
    }
}
