//! The access log: one JSON line per request, written off the request path,
//! rotated by size (`access.log`, then `access.log.1` … `.N`, oldest last),
//! and read back from its end for incidents.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Where an environment's access log goes and how much of it is kept.
#[derive(Clone, Debug)]
pub struct AccessLog {
    pub path: PathBuf,
    /// A file is rotated before it grows past this.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

impl AccessLog {
    /// 100 MiB a file, 5 rotated ones kept.
    pub fn new(path: PathBuf) -> AccessLog {
        AccessLog {
            path,
            max_bytes: 100 << 20,
            keep: 5,
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        rotated(&self.path, n)
    }

    /// Opens the file and starts the writer; lines sent to the answer are written.
    pub(crate) fn start(self) -> Option<mpsc::UnboundedSender<String>> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).ok()?;
        }
        let file = open(&self.path).ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(self, file, rx));
        Some(tx)
    }

    /// `access.log.N` becomes `.N+1` (the last is dropped), the current one `.1`.
    fn rotate(&self) -> std::io::Result<std::fs::File> {
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, self.rotated(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        open(&self.path)
    }
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

async fn write(log: AccessLog, file: std::fs::File, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    let mut out = std::io::BufWriter::new(file);
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let _ = out.flush();
                continue;
            }
        };
        let Some(line) = line else { break };
        let length = line.len() as u64 + 1;
        if size > 0 && size + length > log.max_bytes {
            let _ = out.flush();
            match log.rotate() {
                Ok(file) => {
                    out = std::io::BufWriter::new(file);
                    size = 0;
                }
                Err(e) => {
                    tracing::warn!(path = %log.path.display(), error = %e, "the access log could not be rotated")
                }
            }
        }
        if writeln!(out, "{line}").is_ok() {
            size += length;
        }
    }
    let _ = out.flush();
}

/// The last `max_bytes` of the log, reaching into the latest rotated file
/// when the current one is shorter; whole lines only.
pub fn recent(path: &Path, max_bytes: u64) -> String {
    let mut text = tail(path, max_bytes);
    if (text.len() as u64) < max_bytes {
        let mut older = tail(&rotated(path, 1), max_bytes - text.len() as u64);
        older.extend_from_slice(&text);
        text = older;
    }
    let text = String::from_utf8_lossy(&text);
    // The first line may have been cut by the byte limit.
    match text.find('\n') {
        Some(cut) if text.len() as u64 >= max_bytes => text[cut + 1..].to_string(),
        _ => text.into_owned(),
    }
}

fn tail(path: &Path, max_bytes: u64) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map_or(0, |m| m.len());
    let from = length.saturating_sub(max_bytes);
    let mut out = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_ok() {
        let _ = file.take(max_bytes).read_to_end(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_rotates_by_size_keeps_n_files_and_reads_back_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog {
            path: dir.path().join("access.log"),
            max_bytes: 1000,
            keep: 2,
        };
        let tx = log.clone().start().unwrap();
        for i in 0..100 {
            tx.send(format!("{{\"n\":{i:03},\"pad\":\"{}\"}}", "x".repeat(70)))
                .unwrap();
        }
        drop(tx);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // The writer ends when the channel does; wait for its last line.
        while !std::fs::read_to_string(&log.path)
            .unwrap_or_default()
            .contains("\"n\":099")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the last line was never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["access.log", "access.log.1", "access.log.2"]);
        for name in &names {
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= 1000, "{name} is {size} bytes");
        }
        let recent = recent(&log.path, 1500);
        let lines: Vec<&str> = recent.lines().collect();
        assert!(lines.len() >= 10, "{} lines", lines.len());
        assert!(lines.last().unwrap().contains("\"n\":099"));
        assert!(
            lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')),
            "whole lines only"
        );
        let numbers: Vec<u32> = lines.iter().map(|l| l[5..8].parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "in order: {numbers:?}"
        );
    }
}
