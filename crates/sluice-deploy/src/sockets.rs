//! The entry points' listening sockets, kept by a small process of their
//! own (`sluice keep-sockets`) so that they outlive a crash of the server,
//! as systemd's socket activation keeps a service's: while the server is
//! down, clients' connections wait in the sockets' queue instead of being
//! refused, and the next server takes the same sockets back and answers
//! them, from the instances it kept (see `deploy::reconcile`).
//!
//! The keeper listens on a Unix socket in the data directory (mode 0600)
//! and takes one request a connection: `HOLD` (kept open by the server
//! while it lives), `PUT KEY` with the sockets (SCM_RIGHTS), `TAKE KEY`
//! (answered with copies), `DROP KEY`, `LINGER` (a hand-over: wait longer),
//! `QUIT`. With no server holding it for [`ORPHANED_FOR`] after a crash, or
//! [`HANDED_OVER_FOR`] after a hand-over, it exits and the sockets close:
//! a server that does not come back must not leave clients waiting, nor
//! hold an address another server (one that took the controllers over)
//! will listen on.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// How long the keeper waits for a server after the last one went away.
pub const ORPHANED_FOR: Duration = Duration::from_secs(5);
/// How long it waits after a server handed over (an upgrade under way).
pub const HANDED_OVER_FOR: Duration = Duration::from_secs(60);
/// The most sockets one entry point has (one per worker thread).
const MAX_FDS: usize = 64;
/// The longest request: a verb and a key.
const MAX_REQUEST: usize = 512;

/// Whether kept sockets bound at `at` serve a `listen:` of `wanted`: the
/// same address, or any port of its IP when it asks for port 0.
pub fn serve_as(at: std::net::SocketAddr, wanted: std::net::SocketAddr) -> bool {
    at.ip() == wanted.ip() && (wanted.port() == 0 || wanted.port() == at.port())
}

/// The keeper's Unix socket under a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("entry-sockets.sock")
}

/// One message: its text and the descriptors that came with it (rustix
/// hands them over as owned, so that none leaks and no `unsafe` is needed).
fn receive(stream: &UnixStream) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buffer = [0u8; MAX_REQUEST];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    // A signal (a child of the server exiting) interrupts a receive on a
    // socket with a timeout even under SA_RESTART (signal(7)): read again.
    let message = loop {
        match recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            received => break received?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    let text = String::from_utf8_lossy(&buffer[..message.bytes.min(MAX_REQUEST)])
        .trim()
        .to_string();
    Ok((text, fds))
}

/// Sends `text` with `fds` as one message.
fn send(stream: &UnixStream, text: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many sockets to pass at once"));
    }
    loop {
        match sendmsg(stream, &iov, &mut control, SendFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            sent => return sent.map(|_| ()).map_err(Into::into),
        }
    }
}

/// What the keeper holds.
#[derive(Default)]
struct Held {
    sockets: HashMap<String, Vec<OwnedFd>>,
    /// Servers holding the keeper now.
    holders: usize,
    /// Since when no server holds it.
    orphaned_since: Option<Instant>,
    /// How long it waits then: [`ORPHANED_FOR`], or [`HANDED_OVER_FOR`]
    /// after a hand-over.
    grace: Duration,
}

/// `sluice keep-sockets`: serves requests on `path` until told to quit or
/// left without a server for [`ORPHANED_FOR`].
pub fn run_keeper(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let held = Arc::new(Mutex::new(Held {
        orphaned_since: Some(Instant::now()),
        grace: ORPHANED_FOR,
        ..Held::default()
    }));
    let watched = held.clone();
    let own_path = path.to_path_buf();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let held = watched.lock().unwrap();
            if held
                .orphaned_since
                .is_some_and(|since| since.elapsed() >= held.grace)
            {
                let _ = std::fs::remove_file(&own_path);
                std::process::exit(0);
            }
        }
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let held = held.clone();
        let own_path = path.to_path_buf();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&stream, &held, &own_path) {
                eprintln!("sluice keep-sockets: {e}");
            }
        });
    }
    Ok(())
}

fn serve_one(stream: &UnixStream, held: &Mutex<Held>, path: &Path) -> std::io::Result<()> {
    let (request, fds) = receive(stream)?;
    let (verb, key) = request.split_once(' ').unwrap_or((request.as_str(), ""));
    match verb {
        "HOLD" => {
            {
                let mut held = held.lock().unwrap();
                held.holders += 1;
                held.orphaned_since = None;
                held.grace = ORPHANED_FOR;
            }
            send(stream, "OK", &[])?;
            // Until the server closes it, or dies.
            let mut rest = Vec::new();
            let _ = (&*stream).read_to_end(&mut rest);
            let mut held = held.lock().unwrap();
            held.holders -= 1;
            if held.holders == 0 {
                held.orphaned_since = Some(Instant::now());
            }
            Ok(())
        }
        "PUT" if !key.is_empty() && !fds.is_empty() => {
            held.lock().unwrap().sockets.insert(key.to_string(), fds);
            send(stream, "OK", &[])
        }
        "TAKE" => {
            let copies: Vec<OwnedFd> = match held.lock().unwrap().sockets.get(key) {
                Some(fds) => fds
                    .iter()
                    .map(|fd| fd.try_clone())
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            if copies.is_empty() {
                return send(stream, "NONE", &[]);
            }
            let borrowed: Vec<BorrowedFd<'_>> = copies.iter().map(|fd| fd.as_fd()).collect();
            send(stream, "OK", &borrowed)
        }
        "LINGER" => {
            held.lock().unwrap().grace = HANDED_OVER_FOR;
            send(stream, "OK", &[])
        }
        "DROP" => {
            held.lock().unwrap().sockets.remove(key);
            send(stream, "OK", &[])
        }
        "QUIT" => {
            let _ = send(stream, "OK", &[]);
            let _ = std::fs::remove_file(path);
            std::process::exit(0);
        }
        _ => send(stream, "ERR unknown request", &[]),
    }
}

/// The server's side: a held connection to its keeper, and requests.
pub struct Keeper {
    path: PathBuf,
    /// Open while this server lives: the keeper knows it is held.
    _hold: UnixStream,
}

impl Keeper {
    /// Connects to the keeper a previous server of `data_dir` left, or
    /// starts one with `program` (this binary), and holds it.
    pub fn connect_or_start(data_dir: &Path, program: &Path) -> std::io::Result<Keeper> {
        let path = socket_path(data_dir);
        if let Ok(keeper) = Keeper::hold(&path) {
            tracing::info!(path = %path.display(), "the entry points' sockets are kept by the keeper a previous server started");
            return Ok(keeper);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("keep-sockets.log"))?;
        let mut command = std::process::Command::new(program);
        command
            .args(["keep-sockets", "--socket"])
            .arg(&path)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // A group of its own: what stops the server's group leaves it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Keeper::hold(&path) {
                Ok(keeper) => {
                    // Reaped when it exits, so that it leaves no zombie.
                    std::thread::spawn(move || child.wait());
                    return Ok(keeper);
                }
                Err(e) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn hold(path: &Path) -> std::io::Result<Keeper> {
        let stream = UnixStream::connect(path)?;
        send(&stream, "HOLD", &[])?;
        let (answer, _) = receive(&stream)?;
        if answer != "OK" {
            return Err(std::io::Error::other(format!(
                "the keeper answered {answer}"
            )));
        }
        Ok(Keeper {
            path: path.to_path_buf(),
            _hold: stream,
        })
    }

    fn ask(
        &self,
        request: &str,
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<(String, Vec<OwnedFd>)> {
        let stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        send(&stream, request, fds)?;
        let answer = receive(&stream)?;
        let _ = (&stream).flush();
        Ok(answer)
    }

    /// Keeps copies of an entry point's sockets under `key`.
    pub fn put(&self, key: &str, sockets: &[std::net::TcpListener]) -> std::io::Result<()> {
        let borrowed: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
        match self.ask(&format!("PUT {key}"), &borrowed)? {
            (answer, _) if answer == "OK" => Ok(()),
            (answer, _) => Err(std::io::Error::other(format!(
                "the keeper answered {answer}"
            ))),
        }
    }

    /// The sockets kept under `key`, if any.
    pub fn take(&self, key: &str) -> std::io::Result<Vec<std::net::TcpListener>> {
        let (_, fds) = self.ask(&format!("TAKE {key}"), &[])?;
        Ok(fds.into_iter().map(std::net::TcpListener::from).collect())
    }

    /// Stops keeping the sockets of `key`.
    pub fn drop_key(&self, key: &str) -> std::io::Result<()> {
        self.ask(&format!("DROP {key}"), &[]).map(|_| ())
    }

    /// Waits [`HANDED_OVER_FOR`] for the next server once this one is gone
    /// (a hand-over), instead of [`ORPHANED_FOR`].
    pub fn linger(&self) {
        let _ = self.ask("LINGER", &[]);
    }

    /// Ends the keeper: its sockets close (a clean stop of the server).
    pub fn quit(&self) {
        let _ = self.ask("QUIT", &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_sockets_serve_the_same_address_or_any_port_asked_for() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        for (kept, wanted, serves) in [
            ("127.0.0.1:4100", "127.0.0.1:4100", true),
            ("127.0.0.1:4100", "127.0.0.1:0", true),
            ("127.0.0.1:4100", "127.0.0.1:4101", false),
            ("127.0.0.1:4100", "0.0.0.0:4100", false),
            ("0.0.0.0:4100", "127.0.0.1:0", false),
        ] {
            assert_eq!(
                serve_as(at(kept), at(wanted)),
                serves,
                "{kept} for {wanted}"
            );
        }
    }

    /// The keeper's loop in a thread of the test, as the process would run it.
    fn keeper_in(dir: &Path) -> PathBuf {
        let path = socket_path(dir);
        let serving = path.clone();
        std::thread::spawn(move || run_keeper(&serving));
        while UnixStream::connect(&path).is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
        path
    }

    #[test]
    fn sockets_put_are_taken_back_listening_with_what_waits_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = keeper_in(dir.path());
        let keeper = Keeper::hold(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        keeper
            .put("shop/prod", std::slice::from_ref(&listener))
            .unwrap();
        // The server dies: its copy closes; the kept one still listens, and
        // a client's connection waits in it.
        drop(listener);
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"ping").unwrap();
        let taken = keeper.take("shop/prod").unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].local_addr().unwrap(), addr);
        let (mut accepted, _) = taken[0].accept().unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(keeper.take("shop/dev").unwrap().is_empty());
        keeper.drop_key("shop/prod").unwrap();
        assert!(keeper.take("shop/prod").unwrap().is_empty());
        // Held to the end of the test process: a keeper left without a
        // server exits its process, which here is the tests'.
        std::mem::forget(keeper);
    }
}
