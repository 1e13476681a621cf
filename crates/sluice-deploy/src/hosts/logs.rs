//! Instances' logs from their hosts: each agent sends the new whole lines
//! of each instance's log with its reports, from the byte the server has
//! up to, and the server appends them to its own copy of the log
//! (`envs/SERVICE/ENV/logs/INSTANCE.log`), where the API, deployments'
//! failures and incidents read it as they read the logs of instances the
//! server runs itself.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

use super::wire::{LogChunk, MAX_CHUNK};

/// The agent's side: what of each instance's log the server has.
#[derive(Default)]
pub(crate) struct Sent {
    through: Mutex<HashMap<String, u64>>,
}

impl Sent {
    /// The whole lines of `log` the server does not have yet, as much as a
    /// report carries; none when there is nothing new.
    pub fn next(&self, id: &str, log: &Path) -> Option<LogChunk> {
        let from = self.through.lock().unwrap().get(id).copied().unwrap_or(0);
        let mut file = std::fs::File::open(log).ok()?;
        // A log that shrank was written anew: from its start.
        let from = if file.metadata().ok()?.len() < from {
            0
        } else {
            from
        };
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut bytes = Vec::with_capacity(4096);
        file.take(MAX_CHUNK as u64).read_to_end(&mut bytes).ok()?;
        chunk(from, &bytes)
    }

    /// Notes that the server took `chunks`.
    pub fn taken<'a>(&self, chunks: impl Iterator<Item = (&'a str, &'a LogChunk)>) {
        let mut through = self.through.lock().unwrap();
        for (id, chunk) in chunks {
            through.insert(id.to_string(), chunk.from + chunk.bytes);
        }
    }

    /// Forgets an instance that stopped.
    pub fn forget(&self, id: &str) {
        self.through.lock().unwrap().remove(id);
    }
}

/// The whole lines at the start of `bytes` (read from byte `from`); a
/// line longer than a chunk is cut there.
fn chunk(from: u64, bytes: &[u8]) -> Option<LogChunk> {
    let end = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) => last + 1,
        None if bytes.len() >= MAX_CHUNK => bytes.len(),
        None => return None,
    };
    Some(LogChunk {
        from,
        bytes: end as u64,
        text: String::from_utf8_lossy(&bytes[..end]).into_owned(),
    })
}

/// The server's side: how far each instance's copy goes, in the agent's
/// bytes. Read from the copy's length when not known (after a restart of
/// the server): the copy holds nothing but what the agent sent.
#[derive(Default)]
pub(crate) struct Copies {
    through: Mutex<HashMap<String, u64>>,
}

impl Copies {
    /// Appends what of `chunk` the copy at `path` does not have yet.
    pub fn append(&self, id: &str, path: &Path, chunk: &LogChunk) -> std::io::Result<()> {
        let known = self.through.lock().unwrap().get(id).copied();
        let through = match known {
            Some(through) => through,
            None => std::fs::metadata(path).map_or(0, |m| m.len()),
        };
        let new = unseen(chunk, through);
        if !new.is_empty() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(new.as_bytes())?;
        }
        let end = (chunk.from + chunk.bytes).max(through);
        self.through.lock().unwrap().insert(id.to_string(), end);
        Ok(())
    }
}

/// What of `chunk` lies past `through`: all of it, none, or (a report
/// sent again whose answer was lost) the lines after what was taken.
fn unseen(chunk: &LogChunk, through: u64) -> &str {
    if chunk.from >= through {
        return &chunk.text;
    }
    let skip = (through - chunk.from) as usize;
    if skip >= chunk.text.len() {
        return "";
    }
    // On a line's start: what was taken ended with a whole line.
    match chunk.text.get(skip..) {
        Some(rest) if chunk.text.as_bytes()[skip - 1] == b'\n' => rest,
        _ => match chunk.text[..]
            .char_indices()
            .find(|(i, c)| *i >= skip && *c == '\n')
        {
            Some((i, _)) => &chunk.text[i + 1..],
            None => "",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_whole_lines() {
        for (bytes, sent) in [
            (&b"one\ntwo\nthr"[..], Some("one\ntwo\n")),
            (b"no end yet", None),
            (b"", None),
            (b"\n", Some("\n")),
        ] {
            assert_eq!(
                chunk(7, bytes).map(|c| c.text),
                sent.map(String::from),
                "{bytes:?}"
            );
        }
        let long = vec![b'x'; MAX_CHUNK];
        assert_eq!(
            chunk(0, &long).unwrap().bytes,
            MAX_CHUNK as u64,
            "cut at the chunk's end"
        );
    }

    #[test]
    fn the_server_appends_what_it_has_not_got() {
        let chunk = |from, text: &str| LogChunk {
            from,
            bytes: text.len() as u64,
            text: text.into(),
        };
        for (from, text, through, new) in [
            (0, "a\nb\n", 0, "a\nb\n"),
            (4, "c\n", 4, "c\n"),
            // Sent again, its answer lost: only the lines after.
            (0, "a\nb\nc\n", 4, "c\n"),
            (0, "a\nb\n", 4, ""),
            // A gap (the copy lost): what came is kept.
            (10, "z\n", 4, "z\n"),
            // Not on a line's start: from the next one.
            (0, "a\nb\nc\n", 3, "c\n"),
        ] {
            assert_eq!(
                unseen(&chunk(from, text), through),
                new,
                "{text:?} from {from} past {through}"
            );
        }
    }

    #[test]
    fn a_copy_goes_on_after_a_restart_of_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let (log, copy) = (dir.path().join("instance.log"), dir.path().join("copy.log"));
        std::fs::write(&log, "one\ntwo\n").unwrap();
        let (agent, server) = (Sent::default(), Copies::default());
        let first = agent.next("i", &log).unwrap();
        server.append("i", &copy, &first).unwrap();
        // The answer was lost: the agent sends it again, with more.
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        let again = agent.next("i", &log).unwrap();
        server.append("i", &copy, &again).unwrap();
        agent.taken([("i", &again)].into_iter());
        // Both restart: the server reads how far its copy goes.
        let (agent, server) = (Sent::default(), Copies::default());
        std::fs::write(&log, "one\ntwo\nthree\nfour\n").unwrap();
        server
            .append("i", &copy, &agent.next("i", &log).unwrap())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "one\ntwo\nthree\nfour\n"
        );
        assert!(
            Sent::default()
                .next("i", &dir.path().join("none"))
                .is_none()
        );
    }
}
