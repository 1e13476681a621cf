//! Real hosts on one machine: each a network namespace joined to the root
//! namespace by a veth pair, with an address of its own and a link that a
//! test can cut. The root namespace forwards between the hosts' links only
//! (each link's own `forwarding`; the machine's `ip_forward` is left as it
//! is), so hosts reach each other as on one network. Needs root and
//! iproute2; `.ci/run` has both.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

/// Why hosts cannot be made here, if they cannot.
pub fn missing() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("root (network namespaces need it)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (apt-get install iproute2)".into());
    }
    None
}

/// A namespace with one link to the root namespace.
pub struct Host {
    /// The namespace's name, which `ip netns identify` prints inside it.
    pub ns: String,
    /// Its address; the root namespace's end of the link is `gateway`.
    pub addr: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The root namespace's end of the veth pair.
    link: String,
}

impl Host {
    /// Makes a host, the next of this test process (64 at most).
    pub fn make() -> Host {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(index < 64, "at most 64 hosts per test process");
        let tag = std::process::id() % 100_000;
        let ns = format!("slh{tag}h{index}");
        let link = format!("slv{tag}h{index}");
        let inner = format!("sli{tag}h{index}");
        // A /30 per host, from a block no real network here uses.
        let base = [10, 213, (tag % 200) as u8, index * 4];
        let gateway = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let addr = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let host = Host {
            ns: ns.clone(),
            addr,
            gateway,
            link: link.clone(),
        };
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        let forwarding = format!("/proc/sys/net/ipv4/conf/{link}/forwarding");
        std::fs::write(&forwarding, "1").unwrap_or_else(|e| panic!("{forwarding}: {e}"));
        in_ns(&ns, &["addr", "add", &format!("{addr}/30"), "dev", &inner]);
        in_ns(&ns, &["link", "set", &inner, "up"]);
        in_ns(&ns, &["link", "set", "lo", "up"]);
        let others = format!("{}.{}.0.0/16", base[0], base[1]);
        in_ns(&ns, &["route", "add", &others, "via", &gateway.to_string()]);
        host
    }

    /// `program` to run inside the host.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, program]);
        command
    }

    /// Starts `program` inside the host, its output to `log`.
    pub fn spawn(&self, program: &str, args: &[&str], log: &std::path::Path) -> Child {
        let out = std::fs::File::create(log).unwrap();
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    /// Cuts the host off the network, as a pulled cable would.
    #[allow(dead_code)]
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    /// Joins it again.
    #[allow(dead_code)]
    pub fn restore(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Host {
    /// Kills what still runs inside, and removes the namespace and its link.
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all);
}
