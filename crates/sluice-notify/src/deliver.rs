//! One delivery attempt over the network: an HTTP POST (signed for the
//! generic webhook) or an email over SMTP. What it answers is only what
//! happened; whether and when to try again is `retry`'s decision.
//!
//! A channel's URL and password are secrets: no error from here contains them.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;
use sha2::Sha256;

use crate::channel::{ChannelKind, Target};

/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent {
        status: Option<u16>,
    },
    /// The receiver answered, and not with success.
    Refused {
        status: u16,
        retry_after: Option<String>,
        detail: String,
    },
    /// An SMTP server's permanent refusal (5xx): trying again would not help.
    Rejected(String),
    /// No answer: the network, a timeout, a TLS failure, or an SMTP 4xx.
    Unreachable(String),
}

/// Headers Sluice signs the generic webhook with; docs/notifications.md
/// shows a receiver's check.
pub const TIMESTAMP_HEADER: &str = "X-Sluice-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Sluice-Signature-256";
pub const KEY_HEADER: &str = "Idempotency-Key";

/// `sha256=HEX` of HMAC-SHA256 over `TIMESTAMP.BODY`: the scheme Sluice
/// checks on incoming webhooks, with the timestamp inside the signature so
/// that a captured request cannot be replayed later.
pub fn signature(key: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends `payload` to a channel once.
pub async fn deliver(
    http: &reqwest::Client,
    kind: ChannelKind,
    target: &Target,
    payload: &Value,
    key: &str,
) -> Delivery {
    match target {
        Target::Http { url, signing_key } => {
            post(http, url, signing_key.as_deref(), payload, key).await
        }
        Target::Smtp {
            url,
            from,
            to,
            ca_pem,
        } => {
            debug_assert_eq!(kind, ChannelKind::Email);
            mail(url, from, to, ca_pem.as_deref(), payload, key).await
        }
    }
}

/// The client every HTTP channel shares: no redirects (a webhook URL is
/// final), a bounded time per attempt.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with rustls and these settings builds")
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    signing_key: Option<&str>,
    payload: &Value,
    key: &str,
) -> Delivery {
    let body = payload.to_string().into_bytes();
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(KEY_HEADER, key);
    if let Some(signing_key) = signing_key {
        let timestamp = chrono::Utc::now().timestamp();
        request = request
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(signing_key, timestamp, &body));
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Delivery::Sent {
            status: Some(response.status().as_u16()),
        },
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(64).collect());
            let text = response.text().await.unwrap_or_default();
            Delivery::Refused {
                status,
                retry_after,
                detail: mask(&printable(&text, 200), url),
            }
        }
        Err(e) => Delivery::Unreachable(mask(&error_chain(&e.without_url()), url)),
    }
}

/// How to reach an SMTP server, from `smtp://[user:password@]host[:port][?tls=none]`
/// or `smtps://…`.
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS, and fail if the server does not offer it.
    StartTls,
    /// TLS from the first byte (port 465).
    Wrapper,
    /// Plain text: only when asked for, for a relay on the same host.
    None,
}

pub fn smtp_settings(url: &str) -> Result<SmtpSettings, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| {
        "the SMTP address does not parse; write smtp://USER:PASSWORD@HOST:587".to_string()
    })?;
    let mut tls = match parsed.scheme() {
        "smtp" => SmtpTls::StartTls,
        "smtps" => SmtpTls::Wrapper,
        _ => {
            return Err(
                "the SMTP address must start with smtp:// (STARTTLS) or smtps:// (TLS)".into(),
            );
        }
    };
    for (k, v) in parsed.query_pairs() {
        match (k.as_ref(), v.as_ref()) {
            ("tls", "none") if tls == SmtpTls::StartTls => tls = SmtpTls::None,
            _ => return Err("the SMTP address takes one option: `?tls=none` (plain text, for a relay on the same host)".into()),
        }
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the SMTP address needs a host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = parsed.port().unwrap_or(match tls {
        SmtpTls::Wrapper => 465,
        _ => 587,
    });
    let credentials = (!parsed.username().is_empty()).then(|| {
        (
            percent_decode(parsed.username()),
            percent_decode(parsed.password().unwrap_or("")),
        )
    });
    Ok(SmtpSettings {
        host,
        port,
        tls,
        credentials,
    })
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

async fn mail(
    url: &str,
    from: &str,
    to: &[String],
    ca_pem: Option<&str>,
    payload: &Value,
    key: &str,
) -> Delivery {
    let settings = match smtp_settings(url) {
        Ok(s) => s,
        Err(e) => return Delivery::Rejected(e),
    };
    let message = match email_message(from, to, payload, key) {
        Ok(m) => m,
        Err(e) => return Delivery::Rejected(e),
    };
    let transport = match smtp_transport(&settings, ca_pem) {
        Ok(t) => t,
        Err(e) => return Delivery::Rejected(e),
    };
    let secret = settings.credentials.as_ref().map(|(_, p)| p.as_str());
    match transport.send(message).await {
        Ok(response) => Delivery::Sent {
            status: Some(u16::from(response.code())),
        },
        Err(e) if e.is_permanent() => {
            Delivery::Rejected(mask_all(&error_chain(&e), &[url], secret))
        }
        Err(e) => Delivery::Unreachable(mask_all(&error_chain(&e), &[url], secret)),
    }
}

fn email_message(
    from: &str,
    to: &[String],
    payload: &Value,
    key: &str,
) -> Result<lettre::Message, String> {
    let subject = payload["subject"].as_str().unwrap_or("[Sluice]");
    let text = payload["text"].as_str().unwrap_or("");
    let mut builder = lettre::Message::builder()
        .from(
            from.parse()
                .map_err(|_| format!("`from` {from} is not an address"))?,
        )
        .subject(subject)
        .message_id(Some(format!("<{key}@sluice>")))
        .header(ContentType::TEXT_PLAIN);
    for address in to {
        builder = builder.to(address
            .parse()
            .map_err(|_| format!("`to` {address} is not an address"))?);
    }
    builder.body(text.to_string()).map_err(|e| e.to_string())
}

fn smtp_transport(
    settings: &SmtpSettings,
    ca_pem: Option<&str>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls_parameters = || -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(settings.host.clone());
        if let Some(pem) = ca_pem {
            let cert = Certificate::from_pem(pem.as_bytes())
                .map_err(|e| format!("the channel's CA certificate does not load: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        builder.build_rustls().map_err(|e| e.to_string())
    };
    let tls = match settings.tls {
        SmtpTls::StartTls => Tls::Required(tls_parameters()?),
        SmtpTls::Wrapper => Tls::Wrapper(tls_parameters()?),
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
        .port(settings.port)
        .tls(tls)
        .timeout(Some(ATTEMPT_TIMEOUT));
    if let Some((user, password)) = &settings.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// An error with its causes, one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    printable(&text, 300)
}

/// The URL, and its path (where webhook services keep their secret), hidden.
fn mask(text: &str, url: &str) -> String {
    mask_all(text, &[url], None)
}

fn mask_all(text: &str, urls: &[&str], secret: Option<&str>) -> String {
    let mut out = text.to_string();
    for url in urls {
        out = out.replace(url, "[channel URL]");
        if let Ok(parsed) = reqwest::Url::parse(url) {
            if parsed.path().len() > 1 {
                out = out.replace(parsed.path(), "/[hidden]");
            }
            if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
                out = out.replace(password, "[hidden]");
            }
        }
    }
    if let Some(secret) = secret.filter(|s| s.len() >= 3) {
        out = out.replace(secret, "[hidden]");
    }
    out
}

fn printable(text: &str, n: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(n)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let a = signature("key-0123456789abcdef", 1_700_000_000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature("key-0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(a, signature("key-0123456789abcdef", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature("other-0123456789abcd", 1_700_000_000, b"{}"));
        // The same bytes the incoming check uses: HMAC-SHA256 of "1.x".
        assert_eq!(
            signature("k", 1, b"x"),
            format!(
                "sha256={}",
                hex::encode({
                    let mut m = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
                    m.update(b"1.x");
                    m.finalize().into_bytes()
                })
            )
        );
    }

    #[test]
    fn smtp_addresses_say_how_to_encrypt() {
        let s = smtp_settings("smtp://alice:p%40ss@mail.example.com").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("mail.example.com", 587, SmtpTls::StartTls)
        );
        assert_eq!(s.credentials, Some(("alice".into(), "p@ss".into())));
        let s = smtp_settings("smtps://mail.example.com").unwrap();
        assert_eq!(
            (s.port, s.tls, s.credentials),
            (465, SmtpTls::Wrapper, None)
        );
        let s = smtp_settings("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((s.port, s.tls), (2525, SmtpTls::None));
        for bad in [
            "http://x",
            "smtps://x?tls=none",
            "smtp://x?debug=1",
            "smtp://",
        ] {
            assert!(smtp_settings(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_never_carry_the_channel_secret() {
        let url = "https://hooks.slack.com/services/T000/B000/s3cr3t";
        let text =
            format!("error sending request for url ({url}): /services/T000/B000/s3cr3t refused");
        let masked = mask(&text, url);
        assert!(!masked.contains("s3cr3t"), "{masked}");
        let masked = mask_all(
            "auth failed for alice:hunter22",
            &["smtp://alice:hunter22@h"],
            Some("hunter22"),
        );
        assert!(!masked.contains("hunter22"), "{masked}");
    }
}
