//! The servers an agent can reach. Servers sharing one database each
//! answer an agent (a standby forwards to the one that acts), so when the
//! server an agent reaches is gone (killed, its host lost) the agent moves
//! on to another: the one it was given first, then those the servers name
//! in their answers. Without it, a server's local agent would keep
//! serving its host, unheard, after another server took the controllers
//! over.

use std::sync::{Arc, Mutex};

/// The most servers an agent keeps: what a server names past it is ignored.
const MAX_SERVERS: usize = 16;

/// The servers an agent knows, and the one it reaches now.
#[derive(Debug)]
pub struct Servers {
    known: Mutex<Known>,
}

#[derive(Debug)]
struct Known {
    /// The server the agent was given, then those it learned.
    urls: Vec<String>,
    /// The one requests go to now.
    at: usize,
}

impl Servers {
    /// An agent given `server` (`http://host:port`).
    pub fn new(server: &str) -> Arc<Servers> {
        Arc::new(Servers {
            known: Mutex::new(Known {
                urls: vec![base(server)],
                at: 0,
            }),
        })
    }

    /// The base URL requests go to now.
    pub fn current(&self) -> String {
        let known = self.known.lock().unwrap();
        known.urls[known.at].clone()
    }

    /// Whether a request to `url` went to the server the agent was given
    /// (a refusal from another may just be a stranger's: it is not final).
    pub fn is_given(&self, url: &str) -> bool {
        self.known.lock().unwrap().of(url) == Some(0)
    }

    /// Says a request to `url` found no server: the next one is tried,
    /// unless another request moved on already.
    pub fn unreachable(&self, url: &str) {
        let mut known = self.known.lock().unwrap();
        if known.of(url) == Some(known.at) {
            let from = known.urls[known.at].clone();
            known.at = (known.at + 1) % known.urls.len();
            tracing::info!(%from, to = %known.urls[known.at], "the server did not answer; trying another");
        }
    }

    /// The servers a server named (`http://host:port` each); the one given
    /// stays first, and the one reached now stays the one reached.
    pub fn learn(&self, named: &[String]) {
        let mut known = self.known.lock().unwrap();
        let current = known.urls[known.at].clone();
        let mut urls = vec![known.urls[0].clone()];
        for url in named.iter().filter(|u| is_server_url(u)).map(|u| base(u)) {
            if urls.len() < MAX_SERVERS && !urls.contains(&url) {
                urls.push(url);
            }
        }
        known.at = urls.iter().position(|u| *u == current).unwrap_or(0);
        known.urls = urls;
    }
}

impl Known {
    /// Which known server a request to `url` went to.
    fn of(&self, url: &str) -> Option<usize> {
        self.urls.iter().position(|server| {
            url.strip_prefix(server.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// `url` without its path: what requests are sent under.
fn base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.strip_suffix("/api/v1") {
        Some(server) => server.to_string(),
        None => url.to_string(),
    }
}

/// Whether a server's answer names something an agent may send its token
/// to: `http(s)://` and a host, short, nothing else.
fn is_server_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && url.len() <= 256
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:[]/".contains(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_moves_requests_on_and_around() {
        let servers = Servers::new("http://a:7300/");
        servers.learn(&["http://b:7300".into(), "http://c:7300".into()]);
        assert_eq!(servers.current(), "http://a:7300");
        // Two requests fail at once: the second does not skip b.
        servers.unreachable("http://a:7300/api/v1/agents/x/heartbeat");
        servers.unreachable("http://a:7300");
        assert_eq!(servers.current(), "http://b:7300");
        servers.unreachable("http://b:7300");
        servers.unreachable("http://c:7300");
        assert_eq!(
            servers.current(),
            "http://a:7300",
            "around to the given one"
        );
    }

    #[test]
    fn what_a_server_names_keeps_the_given_first_and_the_current_current() {
        let servers = Servers::new("http://a:7300");
        servers.learn(&["http://b:7300".into()]);
        servers.unreachable("http://a:7300");
        servers.learn(&[
            "http://c:7300".into(),
            "http://b:7300/".into(),
            "http://a:7300".into(),
        ]);
        assert_eq!(servers.current(), "http://b:7300");
        assert!(servers.is_given("http://a:7300/api/v1/agents"));
        assert!(!servers.is_given("http://a:73000/api/v1/agents"));
        assert!(!servers.is_given("http://b:7300"));
        // b is no longer named: back to the given one.
        servers.learn(&["http://c:7300".into()]);
        assert_eq!(servers.current(), "http://a:7300");
    }

    #[test]
    fn only_server_urls_are_learned_and_at_most_sixteen() {
        let table = [
            ("http://10.0.0.2:7300", true),
            ("https://sluice.example.com", true),
            ("http://[::1]:7300", true),
            ("ftp://a", false),
            ("http://", false),
            ("http://a b", false),
            ("http://a?x=y", false),
            ("javascript:alert(1)", false),
        ];
        for (url, ok) in table {
            assert_eq!(is_server_url(url), ok, "{url}");
        }
        let servers = Servers::new("http://a:7300");
        let many: Vec<String> = (0..40).map(|i| format!("http://s{i}:7300")).collect();
        servers.learn(&many);
        assert_eq!(servers.known.lock().unwrap().urls.len(), MAX_SERVERS);
    }
}
