//! Channels as an admin describes them: which kind, where (a secret
//! target), which events by default, and how bursts are collapsed. Every
//! field is checked here, at the edge, before it is stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_spec::EventPattern;
use sluice_store::{Flag, NewChannel, RouteRow};

/// Where a notification can go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A Slack incoming webhook (Rocket.Chat takes the same payload).
    Slack,
    /// A Mattermost incoming webhook: Slack's payload.
    Mattermost,
    /// A Microsoft Teams workflow webhook: an Adaptive Card.
    Teams,
    /// A Discord webhook: embeds.
    Discord,
    /// Any HTTPS endpoint: Sluice's JSON, signed with HMAC-SHA256.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 6] = [
        ChannelKind::Slack,
        ChannelKind::Mattermost,
        ChannelKind::Teams,
        ChannelKind::Discord,
        ChannelKind::Webhook,
        ChannelKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Mattermost => "mattermost",
            ChannelKind::Teams => "teams",
            ChannelKind::Discord => "discord",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Result<ChannelKind, String> {
        ChannelKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                let shown: String = text.chars().take(40).collect();
                format!(
                    "`{}` is not a kind of channel; expected slack, mattermost, teams, discord, webhook or email",
                    shown.escape_debug()
                )
            })
    }
}

/// What a sender needs to reach a channel; stored as JSON, never shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    Http {
        url: String,
        /// The generic webhook's HMAC key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_key: Option<String>,
    },
    Smtp {
        /// `smtp://[user:password@]host[:port]` (STARTTLS, required),
        /// `smtps://…` (TLS from the start), or `smtp://…?tls=none` (plain,
        /// for a relay on the same host).
        url: String,
        from: String,
        to: Vec<String>,
        /// A CA certificate (PEM) to trust besides the usual roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

/// A channel as the API and the CLI take it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    pub name: String,
    pub kind: String,
    /// The webhook URL (every kind but email).
    #[serde(default)]
    pub url: Option<String>,
    /// The generic webhook's signing key; made up and answered once when not given.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// Email: the SMTP server, `smtp://user:password@host:587`.
    #[serde(default)]
    pub smtp: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// Email: a CA certificate (PEM) the SMTP server's certificate chains to.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Server-wide: event kinds that go to this channel from every service.
    #[serde(default)]
    pub on: Vec<String>,
    /// …only in these environments (any when empty).
    #[serde(default)]
    pub env: Vec<String>,
    /// How long a burst's first notification waits for others (default 5s).
    #[serde(default)]
    pub wait: Option<String>,
    /// The least time between two messages (default 30s).
    #[serde(default)]
    pub interval: Option<String>,
}

pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const MAX_URL: usize = 2048;
const MAX_PEM: usize = 64 << 10;

/// A checked channel, and the signing key when Sluice made it up (to show once).
pub fn validate(input: ChannelInput) -> Result<(NewChannel, Option<String>), String> {
    if let Some(why) = sluice_spec::paths::name_problem(&input.name) {
        let shown: String = input.name.chars().take(40).collect();
        return Err(format!(
            "`{}` is not a valid channel name: {why}; use lowercase letters, digits and `-` (e.g. `team-chat`)",
            shown.escape_debug()
        ));
    }
    let kind = ChannelKind::parse(&input.kind)?;
    let mut made_key = None;
    let target = match kind {
        ChannelKind::Email => email_target(&input)?,
        _ => {
            let url = input.url.as_deref().ok_or(
                "a webhook channel needs `url` (--url URL): the address the service gave you",
            )?;
            check_http_url(url)?;
            let signing_key = match (kind, &input.signing_key) {
                (ChannelKind::Webhook, Some(key)) => {
                    check_key(key)?;
                    Some(key.clone())
                }
                (ChannelKind::Webhook, None) => {
                    let key = hex::encode(rand::random::<[u8; 32]>());
                    made_key = Some(key.clone());
                    Some(key)
                }
                (_, Some(_)) => {
                    return Err(
                        "only a `webhook` channel is signed; leave out `signing_key`".into(),
                    );
                }
                (_, None) => None,
            };
            Target::Http {
                url: url.to_string(),
                signing_key,
            }
        }
    };
    let routes = routes(&input.name, &input.on, &input.env)?;
    let wait = duration(input.wait.as_deref(), DEFAULT_WAIT, "wait")?;
    let interval = duration(input.interval.as_deref(), DEFAULT_INTERVAL, "interval")?;
    let channel = NewChannel {
        name: input.name,
        kind: kind.as_str().to_string(),
        target: serde_json::to_string(&target).map_err(|e| e.to_string())?,
        wait_ms: wait.as_millis() as i64,
        interval_ms: interval.as_millis() as i64,
        routes,
    };
    Ok((channel, made_key))
}

/// Routes from event patterns and environments, to one channel.
pub fn routes(channel: &str, on: &[String], env: &[String]) -> Result<Vec<RouteRow>, String> {
    if on.len() > 100 || env.len() > 100 {
        return Err("at most 100 event kinds and 100 environments a route".into());
    }
    for e in env {
        if let Some(why) = sluice_spec::paths::name_problem(e) {
            return Err(format!(
                "`{}` is not an environment name: {why}",
                e.escape_debug()
            ));
        }
    }
    let mut rows = Vec::new();
    for text in on {
        let pattern = EventPattern::parse(text)?;
        let (kind, prefix) = match pattern {
            EventPattern::Kind(k) => (k, false),
            EventPattern::Prefix(p) => (p, true),
            EventPattern::All => (String::new(), true),
        };
        let environments: Vec<Option<String>> = if env.is_empty() {
            vec![None]
        } else {
            env.iter().cloned().map(Some).collect()
        };
        for environment in environments {
            rows.push(RouteRow {
                service: None,
                kind: kind.clone(),
                prefix: Flag(prefix),
                environment,
                channel: channel.to_string(),
            });
        }
    }
    Ok(rows)
}

/// A service's `notify:` routes as rows.
pub fn service_routes(service: &str, routes: &[sluice_spec::NotifyRoute]) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    for route in routes {
        let on: Vec<String> = route.on.iter().cloned().map(String::from).collect();
        for channel in &route.to {
            // Validated with the spec; a failure here cannot happen.
            if let Ok(found) = self::routes(channel, &on, &route.env) {
                rows.extend(found.into_iter().map(|mut r| {
                    r.service = Some(service.to_string());
                    r
                }));
            }
        }
    }
    rows
}

fn email_target(input: &ChannelInput) -> Result<Target, String> {
    let url = input
        .smtp
        .as_deref()
        .ok_or("an email channel needs `smtp` (--smtp smtp://USER:PASSWORD@HOST:587)")?;
    if url.len() > MAX_URL {
        return Err("the SMTP URL is longer than 2048 bytes".into());
    }
    crate::deliver::smtp_settings(url)?;
    let from = input
        .from
        .as_deref()
        .ok_or("an email channel needs `from` (--from sluice@example.com)")?;
    check_address(from)?;
    if input.to.is_empty() || input.to.len() > 50 {
        return Err("an email channel needs 1 to 50 `to` addresses (--to team@example.com)".into());
    }
    for to in &input.to {
        check_address(to)?;
    }
    if let Some(pem) = &input.ca_pem
        && (pem.len() > MAX_PEM || !pem.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(
            "`ca_pem` must be a PEM certificate (-----BEGIN CERTIFICATE-----), at most 64 KiB"
                .into(),
        );
    }
    Ok(Target::Smtp {
        url: url.to_string(),
        from: from.to_string(),
        to: input.to.clone(),
        ca_pem: input.ca_pem.clone(),
    })
}

fn check_http_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err("the URL is longer than 2048 bytes".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the URL does not parse: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("the URL must be http:// or https:// with a host".into());
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.len() < 16 || key.len() > 256 || key.chars().any(|c| c.is_control() || c == ' ') {
        return Err("a signing key is 16 to 256 printable characters without spaces".into());
    }
    Ok(())
}

fn check_address(address: &str) -> Result<(), String> {
    address.parse::<lettre::Address>().map(|_| ()).map_err(|_| {
        let shown: String = address.chars().take(60).collect();
        format!("`{}` is not an email address", shown.escape_debug())
    })
}

fn duration(text: Option<&str>, default: Duration, what: &str) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = sluice_spec::parse_duration(text).map_err(|e| format!("`{what}`: {e}"))?;
    if d > Duration::from_secs(3600) {
        return Err(format!("`{what}` is at most 1h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str) -> ChannelInput {
        ChannelInput {
            name: "team-chat".into(),
            kind: kind.into(),
            url: Some("https://hooks.example.com/services/T0/B0/xyz".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_webhook_gets_a_signing_key_made_up_once_and_others_none() {
        let (channel, key) = validate(input("webhook")).unwrap();
        let key = key.expect("made up");
        assert_eq!(key.len(), 64);
        assert!(channel.target.contains(&key));
        let (channel, key) = validate(input("slack")).unwrap();
        assert!(key.is_none());
        assert!(!channel.target.contains("signing_key"));
        assert_eq!(channel.wait_ms, 5000);
    }

    #[test]
    fn bad_channels_are_refused_with_what_to_do() {
        let cases: Vec<(ChannelInput, &str)> = vec![
            (
                ChannelInput {
                    name: "Team Chat".into(),
                    ..input("slack")
                },
                "not a valid channel name",
            ),
            (input("pager"), "not a kind of channel"),
            (
                ChannelInput {
                    url: None,
                    ..input("slack")
                },
                "needs `url`",
            ),
            (
                ChannelInput {
                    url: Some("file:///etc/passwd".into()),
                    ..input("slack")
                },
                "http:// or https://",
            ),
            (
                ChannelInput {
                    signing_key: Some("0123456789abcdef".into()),
                    ..input("slack")
                },
                "only a `webhook`",
            ),
            (
                ChannelInput {
                    signing_key: Some("short".into()),
                    ..input("webhook")
                },
                "16 to 256",
            ),
            (
                ChannelInput {
                    on: vec!["deploy.failed".into()],
                    ..input("slack")
                },
                "not an event kind",
            ),
            (
                ChannelInput {
                    wait: Some("2h".into()),
                    ..input("slack")
                },
                "at most 1h",
            ),
            (
                ChannelInput {
                    smtp: Some("smtp://mail.example.com".into()),
                    ..input("email")
                },
                "needs `from`",
            ),
            (
                ChannelInput {
                    smtp: Some("smtp://mail.example.com".into()),
                    from: Some("a@example.com".into()),
                    ..input("email")
                },
                "1 to 50 `to`",
            ),
            (
                ChannelInput {
                    smtp: Some("smtp://mail.example.com".into()),
                    from: Some("a@example.com".into()),
                    to: vec!["not an address".into()],
                    ..input("email")
                },
                "not an email address",
            ),
            (
                ChannelInput {
                    smtp: Some("http://mail.example.com".into()),
                    ..input("email")
                },
                "smtp://",
            ),
        ];
        for (input, want) in cases {
            let got = validate(input).unwrap_err();
            assert!(got.contains(want), "{got:?} should say {want:?}");
        }
    }

    #[test]
    fn routes_expand_over_environments_and_prefixes() {
        let rows = routes(
            "c",
            &["experiment.*".into(), "*".into()],
            &["prod".into(), "dev".into()],
        )
        .unwrap();
        let shown: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{}{} {}",
                    r.kind,
                    if r.prefix.0 { "*" } else { "" },
                    r.environment.as_deref().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            shown,
            ["experiment.* prod", "experiment.* dev", "* prod", "* dev"]
        );
    }
}
