//! Webhooks from GitHub and Gitea: signature checks and the `push` and
//! `pull_request` events that become changes.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Whether `X-Hub-Signature-256: sha256=HEX` is the HMAC-SHA256 of `body`
/// under `secret`, compared in constant time.
pub fn signature_is_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_digest) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature header value for `body`, as a forge would send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A commit on a ref that a webhook announced (held in the store as JSON
/// until a run is queued for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    pub ref_name: String,
    pub branch: String,
    pub sha: String,
    pub pull_request: Option<i64>,
    pub title: String,
    pub author: String,
}

/// What an event asks for: a change, or nothing (with why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Change(Announced),
    Ignored(String),
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    ref_name: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    head_commit: Option<Commit>,
    pusher: Option<Person>,
}

#[derive(Deserialize)]
struct Commit {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Person {
    #[serde(alias = "login", alias = "username", default)]
    name: String,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: i64,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct PullRequest {
    #[serde(default)]
    title: String,
    head: Head,
    user: Option<Person>,
}

#[derive(Deserialize)]
struct Head {
    sha: String,
    #[serde(rename = "ref")]
    ref_name: String,
}

/// A line of text from a payload, printable and at most 200 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// A ref or branch name from a payload: printable, at most 255 bytes.
fn ref_text(text: String, field: &str) -> Result<String, String> {
    if text.len() > 255 || text.chars().any(char::is_control) {
        return Err(format!(
            "`{field}` is not a ref name: longer than 255 bytes or with control characters"
        ));
    }
    Ok(text)
}

/// Reads an event body; `event` is the `X-GitHub-Event` or `X-Gitea-Event` header.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, String> {
    match event {
        "push" => {
            let mut push: Push =
                serde_json::from_slice(body).map_err(|e| format!("bad push payload: {e}"))?;
            push.ref_name = ref_text(push.ref_name, "ref")?;
            if push.deleted || push.after.chars().all(|c| c == '0') {
                return Ok(Parsed::Ignored(format!("{} was deleted", push.ref_name)));
            }
            let Some(branch) = push.ref_name.strip_prefix("refs/heads/") else {
                return Ok(Parsed::Ignored(format!(
                    "{} is not a branch",
                    push.ref_name
                )));
            };
            crate::git::check_sha(&push.after)
                .map_err(|e| format!("bad push payload: `after`: {e}"))?;
            Ok(Parsed::Change(Announced {
                branch: branch.to_string(),
                ref_name: push.ref_name.clone(),
                sha: push.after,
                pull_request: None,
                title: push
                    .head_commit
                    .map(|c| printable(c.message.lines().next().unwrap_or("")))
                    .unwrap_or_default(),
                author: push.pusher.map(|p| printable(&p.name)).unwrap_or_default(),
            }))
        }
        "pull_request" => {
            let event: PullRequestEvent = serde_json::from_slice(body)
                .map_err(|e| format!("bad pull_request payload: {e}"))?;
            if !matches!(
                event.action.as_str(),
                "opened" | "synchronize" | "synchronized" | "reopened"
            ) {
                return Ok(Parsed::Ignored(format!(
                    "pull request action `{}` needs no run",
                    event.action
                )));
            }
            crate::git::check_sha(&event.pull_request.head.sha)
                .map_err(|e| format!("bad pull_request payload: `pull_request.head.sha`: {e}"))?;
            Ok(Parsed::Change(Announced {
                ref_name: format!("refs/pull/{}/head", event.number),
                branch: ref_text(event.pull_request.head.ref_name, "pull_request.head.ref")?,
                sha: event.pull_request.head.sha,
                pull_request: Some(event.number),
                title: printable(&event.pull_request.title),
                author: event
                    .pull_request
                    .user
                    .map(|u| printable(&u.name))
                    .unwrap_or_default(),
            }))
        }
        "ping" => Ok(Parsed::Ignored("ping".into())),
        other => Ok(Parsed::Ignored(format!("event `{other}` needs no run"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_check_out_only_with_the_right_secret() {
        let body = br#"{"zen":"keep it logically awesome"}"#;
        let header = sign("s3cret", body);
        assert!(signature_is_valid("s3cret", body, Some(&header)));
        assert!(!signature_is_valid("other", body, Some(&header)));
        assert!(!signature_is_valid("s3cret", b"tampered", Some(&header)));
        assert!(!signature_is_valid("s3cret", body, None));
        assert!(!signature_is_valid("s3cret", body, Some("sha1=abc")));
        assert!(!signature_is_valid("s3cret", body, Some("sha256=zz")));
    }

    #[test]
    fn known_github_signature() {
        // The example from GitHub's documentation on validating deliveries.
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_is_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            Some(header)
        ));
    }

    #[test]
    fn push_and_pull_request_become_changes() {
        let push = br#"{"ref":"refs/heads/main","after":"abc1230000000000000000000000000000000000","head_commit":{"message":"fix checkout\n\nlong"},"pusher":{"name":"ana"}}"#;
        let Parsed::Change(c) = parse("push", push).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                c.branch.as_str(),
                c.sha.as_str(),
                c.title.as_str(),
                c.author.as_str()
            ),
            (
                "main",
                "abc1230000000000000000000000000000000000",
                "fix checkout",
                "ana"
            )
        );
        let pr = br#"{"action":"synchronize","number":7,"pull_request":{"title":"new cart","head":{"sha":"def0000000000000000000000000000000000000","ref":"feature/cart"},"user":{"login":"bo"}}}"#;
        let Parsed::Change(c) = parse("pull_request", pr).unwrap() else {
            panic!()
        };
        assert_eq!(c.ref_name, "refs/pull/7/head");
        assert_eq!(c.pull_request, Some(7));
        assert_eq!(c.author, "bo");
        let closed =
            br#"{"action":"closed","number":7,"pull_request":{"head":{"sha":"def","ref":"x"}}}"#;
        assert!(matches!(
            parse("pull_request", closed).unwrap(),
            Parsed::Ignored(_)
        ));
        let deleted = br#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true}"#;
        assert!(matches!(
            parse("push", deleted).unwrap(),
            Parsed::Ignored(_)
        ));
        assert!(parse("push", b"not json").is_err());
    }

    #[test]
    fn a_sha_that_is_not_hex_is_refused_before_it_reaches_git() {
        for after in ["--output=/tmp/x", "abc123", "é", &"a".repeat(41)] {
            let push = serde_json::json!({"ref": "refs/heads/main", "after": after});
            let error = parse("push", push.to_string().as_bytes()).unwrap_err();
            assert!(error.contains("not a commit id"), "{after}: {error}");
        }
        let pr = br#"{"action":"opened","number":1,"pull_request":{"head":{"sha":"--upload-pack=x","ref":"x"}}}"#;
        assert!(
            parse("pull_request", pr)
                .unwrap_err()
                .contains("not a commit id")
        );
    }

    #[test]
    fn names_and_titles_from_a_payload_are_bounded_and_printable() {
        let push = serde_json::json!({
            "ref": "refs/heads/main",
            "after": "a".repeat(40),
            "head_commit": {"message": format!("\u{1b}[31mred{}", "x".repeat(5000))},
            "pusher": {"name": "ana\r\nX-Evil: 1"},
        });
        let Parsed::Change(c) = parse("push", push.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert!(c.title.chars().count() <= 200 && !c.title.contains('\u{1b}'));
        assert_eq!(c.author, "anaX-Evil: 1");
        let long_ref = serde_json::json!({"ref": format!("refs/heads/{}", "b".repeat(300)), "after": "a".repeat(40)});
        assert!(parse("push", long_ref.to_string().as_bytes()).is_err());
    }
}
