//! The demo's stand-in for a team's chat: a signed-webhook receiver on
//! loopback that checks each message's signature and keeps what it said,
//! for the story to print at its end.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sluice_notify::deliver::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};

/// What the receiver was told, message by message.
#[derive(Clone, Default)]
pub struct Inbox {
    pub url: String,
    key: Arc<Mutex<String>>,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl Inbox {
    pub async fn start() -> Result<Inbox> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let inbox = Inbox {
            url: format!("http://{}/team-chat", listener.local_addr()?),
            ..Default::default()
        };
        let receiving = inbox.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let inbox = receiving.clone();
            async move { inbox.receive(&headers, &body) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(inbox)
    }

    /// The key the channel signs with, as Sluice answered when it was added.
    pub fn trust(&self, key: &str) {
        *self.key.lock().unwrap() = key.to_string();
    }

    fn receive(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let Ok(timestamp) = header(TIMESTAMP_HEADER).parse::<i64>() else {
            return StatusCode::UNAUTHORIZED;
        };
        let fresh = (chrono::Utc::now().timestamp() - timestamp).abs() < 300;
        let expected = signature(&self.key.lock().unwrap(), timestamp, body);
        if !fresh || header(SIGNATURE_HEADER) != expected {
            return StatusCode::UNAUTHORIZED;
        }
        match serde_json::from_slice(body) {
            Ok(message) => {
                self.messages.lock().unwrap().push(message);
                StatusCode::NO_CONTENT
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Each message as the chat would show it: its title, then its events.
    pub fn transcript(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for message in self.messages.lock().unwrap().iter() {
            lines.push(format!("  • {}", message["title"].as_str().unwrap_or("")));
            let events = message["events"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if events.len() > 1 {
                for event in events {
                    lines.push(format!(
                        "      {} {}",
                        event["kind"].as_str().unwrap_or(""),
                        event["summary"].as_str().unwrap_or("")
                    ));
                }
            }
            if let Some(url) = events.first().and_then(|e| e["url"].as_str()) {
                lines.push(format!("      {url}"));
            }
        }
        lines
    }
}
