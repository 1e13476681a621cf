//! A server process per test, git repositories to commit to, and waiting.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// The databases every scenario runs against: SQLite, and PostgreSQL when
/// `SLUICE_TEST_POSTGRES` names a server (CI always sets it).
pub async fn databases(dir: &Path) -> Vec<Option<String>> {
    let mut all = vec![None];
    if let Some(url) = sluice_store::testing::fresh_postgres(dir).await {
        all.push(Some(url));
    }
    all
}

/// A `sluice serve` process on a port of its own.
pub struct Server {
    pub url: String,
    pub token: String,
    pub data_dir: PathBuf,
    child: Child,
    http: reqwest::Client,
}

impl Server {
    pub fn start(data_dir: &Path, database: Option<&str>) -> Server {
        Server::start_with(data_dir, database, &[])
    }

    /// A server with more `sluice serve` options.
    pub fn start_with(data_dir: &Path, database: Option<&str>, options: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", data_dir, database, options)
    }

    /// A server listening on `listen`, with more `sluice serve` options.
    pub fn start_on(
        listen: &str,
        data_dir: &Path,
        database: Option<&str>,
        options: &[&str],
    ) -> Server {
        let mut command = Command::new(SLUICE);
        command
            .args([
                "serve",
                "--listen",
                listen,
                "--poll-interval",
                "1s",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(options)
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Appended: a server started again on the same data directory
            // (a restart) keeps the account of the one before it.
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.with_extension("log"))
                    .unwrap_or_else(|_| tempfile_log()),
            ));
        if let Some(url) = database {
            command.args(["--database", url]);
        }
        let mut child = command.spawn().expect("start sluice serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(address) = line.split("listening on ").nth(1) {
                url = Some(address.trim().to_string());
                break;
            }
        }
        let url = url.expect("the server printed its address");
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        // A server standing by beside another (on PostgreSQL) has none:
        // the test gives it the first server's.
        let token = std::fs::read_to_string(data_dir.join("initial-admin-token"))
            .unwrap_or_default()
            .trim()
            .to_string();
        Server {
            url,
            token,
            data_dir: data_dir.to_path_buf(),
            child,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the process as an operator would (SIGTERM), and waits for it.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the process to end by itself: its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        exited(&mut self.child, "the server").await.code()
    }

    /// Ends the process at once, as a crash would.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .request(reqwest::Method::GET, path, Some(&self.token))
            .await
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_as(&self.token, path, body).await
    }

    /// Runs the CLI against this server with its admin token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_input(args, "")
    }

    pub fn cli_with_input(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(SLUICE)
            .args(args)
            .env("SLUICE_SERVER", &self.url)
            .env("SLUICE_TOKEN", &self.token)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Registers a local repository through the CLI.
    pub fn add_repo(&self, repo: &GitRepo) {
        let out = self.cli(&["repo", "add", repo.path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "repo add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until a run matching `pick` has ended, and returns its detail.
    pub async fn wait_run(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = self.get("/runs?limit=100").await;
            if let Some(run) = runs.as_array().unwrap().iter().find(|r| pick(r)) {
                let status = run["status"].as_str().unwrap();
                if !["queued", "running"].contains(&status) {
                    return self.get(&format!("/runs/{}", run["id"])).await;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no finished run for {what}; runs: {runs:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn logs(&self, run: &Value) -> Vec<String> {
        let logs = self.get(&format!("/runs/{}/logs", run["id"])).await;
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Server {
    /// Stops the server as an operator would, so that it stops its
    /// instances too (a kill would leave them running after the test, as a
    /// crash leaves them for the next start); a server that does not exit
    /// within 10 s is killed.
    fn drop(&mut self) {
        let mut stuck = false;
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    stuck = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        stop_orphaned_local_agent(&self.data_dir);
        // A server killed here after the 10 s (its drain waits for clients
        // this blocked thread cannot serve) leaves its instances running, as
        // a crash would for the next start; no next start comes, so they go
        // rather than outlive the test. (After `kill_hard` the next server
        // owns them.)
        if stuck && self.data_dir.exists() {
            for (pid, _) in crate::restart::instance_processes(&self.data_dir) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            // The server's own account of what went wrong, for whoever reads the failure.
            // (Those before it on this data directory, and the keeper of
            // the entry points' sockets, included.)
            for (what, path) in [
                ("the server's log", self.data_dir.with_extension("log")),
                (
                    "the socket keeper's log",
                    self.data_dir.join("keep-sockets.log"),
                ),
            ] {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- last lines of {what}:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn tempfile_log() -> std::fs::File {
    std::fs::File::create("/dev/null").unwrap()
}

/// A git repository in a temporary directory, with an author set.
pub struct GitRepo {
    pub path: PathBuf,
}

impl GitRepo {
    pub fn new(dir: &Path, name: &str) -> GitRepo {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        let repo = GitRepo { path };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "dev@example.com"]);
        repo.git(&["config", "user.name", "Dev"]);
        repo
    }

    /// Runs git in the repository; commit dates are fixed, so shas are the same on every run.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(args)
            .env("GIT_AUTHOR_DATE", "@1795694400 +0000")
            .env("GIT_COMMITTER_DATE", "@1795694400 +0000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn write(&self, file: &str, text: &str) {
        let path = self.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Writes the files and commits them; returns the new sha.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        for (file, text) in files {
            self.write(file, text);
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A file a step may write though it runs as a user of its own (as root,
/// steps cannot write the test's directories): created empty, mode 0666.
pub fn writable_by_steps(path: &Path) -> &Path {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

/// A temporary directory that other users may enter, as the instances of
/// each environment run as a user of their own when the tests run as root.
/// Held by the test that judges latency on a real application and by the
/// tests that load the machine most (several hosts, each with its agent,
/// instances and load), so that neither runs during the other: on two
/// cores, one's load is the other's slowdown, and a B judged slower for it
/// is rolled back.
pub async fn machine_to_myself() -> tokio::sync::MutexGuard<'static, ()> {
    static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    MACHINE.lock().await
}

pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs `scenario` once per database, each with its own directory and server.
pub async fn each_database<F, Fut>(scenario: F)
where
    F: Fn(PathBuf, Option<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempdir();
    for (i, database) in databases(dir.path()).await.into_iter().enumerate() {
        let sub = dir.path().join(format!("db{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        eprintln!(
            "-- against {}",
            if database.is_some() {
                "postgres"
            } else {
                "sqlite"
            }
        );
        scenario(sub, database).await;
    }
}

/// Stops the local agent of the data directory `data_dir` once no server
/// runs there: one killed (`kill_hard`) and never started again leaves it
/// serving, as it should in production, but a test must not.
pub fn stop_orphaned_local_agent(data_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(data_dir.join("local-agent/pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|pid| process_alive(*pid))
    else {
        return;
    };
    let dir = data_dir.as_os_str().as_encoded_bytes();
    let serving = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.get(1) == Some(&&b"serve"[..])
            && args.contains(&dir)
            && entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(process_alive)
    });
    if serving {
        return;
    }
    let agent = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGKILL);
}

pub fn process_alive(pid: i32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Copies a directory of `tests/fixtures` into the repository (files keep their modes).
pub fn copy_fixture(repo: &GitRepo, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(&repo.path)
        .status()
        .unwrap();
    assert!(status.success());
}

impl Server {
    /// A token of its own for a person with a role (and groups), made through the API.
    pub async fn token_for(&self, name: &str, role: &str, groups: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/tokens",
                serde_json::json!({ "name": name, "role": role, "groups": groups }),
            )
            .await;
        assert_eq!(status, 201, "{body:#}");
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::POST, path, Some(token))
            .await
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until an environment runs `release` with `healthy` healthy
    /// instances behind its bound entry point; returns its status.
    /// Waits until every entry point of `service`'s `env` on an agent's
    /// host (the local agent's too) routes by the table the server sends
    /// now: what the server just changed (an experiment's start) is what
    /// a request meets.
    pub async fn wait_routed(&self, service: &str, env: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all = self.get(&format!("/status?service={service}")).await;
            let e = (all.as_array().into_iter().flatten()).find(|e| e["environment"] == env);
            let routed = e.is_some_and(|e| {
                let points = e["host_entry_points"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                points.iter().all(|p| p["version"] == e["table_version"])
            });
            if routed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{env} never routed by the server's table: {all:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_env(&self, service: &str, env: &str, release: i64, healthy: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let all = self.get(&format!("/status?service={service}")).await;
            if let Some(e) = all
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["environment"] == env)
            {
                let ok = e["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["healthy"] == true && i["release"] == release)
                    .count();
                let total = e["instances"].as_array().unwrap().len();
                // Serving means its entry point is bound too: a restarted
                // server lists adopted instances a moment before it binds.
                let bound = e["listen"].is_string();
                if e["release"] == release && ok == healthy && total == healthy && bound {
                    return e.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{env} never ran v{release} on {healthy} healthy instances: {all:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the list at `path` has an item `pick` accepts; returns it.
    pub async fn wait_for(&self, path: &str, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all = self.get(path).await;
            if let Some(found) = all.as_array().and_then(|a| a.iter().find(|v| pick(v))) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "never saw {what}: {all:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_promotion(&self, id: i64, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let promotion = self.get(&format!("/promotions/{id}")).await;
            if pick(&promotion) {
                return promotion;
            }
            assert!(
                Instant::now() < deadline,
                "promotion {id} never got there: {promotion:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A port that was free a moment ago, for a listener the test names in a
/// spec. Picked below the kernel's ephemeral range: a port the kernel hands
/// out (`bind(0)`) may be given to another process's outgoing connection
/// before our listener binds it, as it once was in CI.
pub(crate) fn free_port() -> u16 {
    let ceiling = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (0..1000)
        .map(|_| rand::random_range(10_000..ceiling.max(10_001)))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .unwrap_or_else(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        })
}

/// Waits (up to 60 s) for `child` to end, without blocking the test's
/// runtime: its other tasks (a client under load) go on meanwhile.
pub async fn exited(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `name=value` of the cookie an answer sets, if it sets one.
pub fn cookie_of(answer: &reqwest::Response) -> Option<String> {
    let set = answer.headers().get("set-cookie")?.to_str().ok()?;
    set.split(';').next().map(str::to_string)
}
