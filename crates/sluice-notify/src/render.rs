//! What a message says, in each channel kind's own shape: Slack blocks,
//! a Teams Adaptive Card, Discord embeds, Sluice's JSON, or an email.
//! Pure: the same events always give the same payload.
//!
//! Every text from an event may come from a commit or a client: it is
//! escaped for the target's markup and can mention nobody (`<!channel>`,
//! `@everyone`).

use serde_json::{Value, json};
use sluice_store::ChangeEvent;

use crate::channel::ChannelKind;

/// The most events a message lists; the rest are counted.
pub const MAX_LISTED: usize = 10;

/// One message: its events, where the dashboard is, and its idempotency key.
pub struct Batch<'a> {
    pub events: &'a [ChangeEvent],
    pub public_url: &'a str,
    pub key: &'a str,
}

/// The payload for a channel kind: JSON for webhooks, `{subject, text}` for email.
pub fn payload(kind: ChannelKind, batch: &Batch) -> Value {
    match kind {
        ChannelKind::Slack | ChannelKind::Mattermost => slack(batch),
        ChannelKind::Teams => teams(batch),
        ChannelKind::Discord => discord(batch),
        ChannelKind::Webhook => webhook(batch),
        ChannelKind::Email => email(batch),
    }
}

/// The message's headline: the event's summary, or how many of which kinds.
pub fn title(events: &[ChangeEvent]) -> String {
    match events {
        [one] => clip(&one.summary, 150),
        many => {
            let mut kinds: Vec<(&str, usize)> = Vec::new();
            for e in many {
                match kinds.iter_mut().find(|(k, _)| *k == e.kind) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((&e.kind, 1)),
                }
            }
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            clip(&format!("{} events: {}", many.len(), parts.join(", ")), 150)
        }
    }
}

/// The dashboard page an event is about.
pub fn link(event: &ChangeEvent, public_url: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let number = |prefix: &str| {
        event
            .subject
            .strip_prefix(prefix)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
    };
    let path = if let Some(n) = number("promotion ") {
        format!("/promotions/{n}")
    } else if let Some(n) = number("experiment ") {
        format!("/experiments/{n}")
    } else if let Some(n) = number("INC-") {
        format!("/incidents/INC-{n}")
    } else if let Some(n) = number("run ") {
        format!("/runs/{n}")
    } else if number("R").is_some() {
        "/rules".to_string()
    } else if let (Some(service), Some(env)) = (&event.service, &event.environment) {
        format!(
            "/services/{}/environments/{}",
            path_part(service),
            path_part(env)
        )
    } else {
        "/changelog".to_string()
    };
    format!("{base}{path}")
}

/// Where: `shop in prod`, `shop`, or nothing.
fn place(event: &ChangeEvent) -> Option<String> {
    match (&event.service, &event.environment) {
        (Some(s), Some(e)) => Some(format!("{s} in {e}")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(e)) => Some(e.clone()),
        (None, None) => None,
    }
}

/// The numbers that matter: the scalar fields of the event's `after`
/// value (an experiment's decision and figures, a gate and what clears it),
/// one level of nesting flattened, at most 12.
pub fn facts(event: &ChangeEvent) -> Vec<(String, String)> {
    let Some(after) = event.after.as_deref() else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<Value>(after) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    flatten("", &value, 0, &mut out);
    out.truncate(12);
    out
}

fn flatten(prefix: &str, value: &Value, depth: usize, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if depth < 2 => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, depth + 1, out);
            }
        }
        Value::Null | Value::Object(_) | Value::Array(_) => {}
        Value::String(s) => out.push((prefix.to_string(), clip(s, 200))),
        Value::Number(n) => out.push((prefix.to_string(), number(n))),
        Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
    }
}

fn number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.abs() < 1.0 => format!("{f:.4}"),
        Some(f) if n.is_f64() => format!("{f:.1}"),
        _ => n.to_string(),
    }
}

fn slack(batch: &Batch) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": no_mentions(&title(batch.events)) }
    })];
    for event in batch.events.iter().take(MAX_LISTED) {
        let mut text = format!("*{}*", slack_text(&event.kind));
        if let Some(place) = place(event) {
            text.push_str(&format!(" · {}", slack_text(&place)));
        }
        text.push_str(&format!("\n{}", slack_text(&clip(&event.summary, 1500))));
        for (k, v) in facts(event) {
            text.push_str(&format!("\n• {}: {}", slack_text(&k), slack_text(&v)));
        }
        text.push_str(&format!(
            "\n<{}|Open in Sluice>",
            link(event, batch.public_url)
        ));
        blocks.push(
            json!({ "type": "section", "text": { "type": "mrkdwn", "text": clip(&text, 2900) } }),
        );
    }
    if let Some(more) = more(batch.events) {
        blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": more }] }));
    }
    json!({ "text": slack_text(&fallback(batch)), "blocks": blocks })
}

fn teams(batch: &Batch) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
        "text": markdown_text(&title(batch.events))
    })];
    for event in batch.events.iter().take(MAX_LISTED) {
        body.push(json!({
            "type": "TextBlock", "wrap": true, "separator": true,
            "text": format!("**{}** {}", markdown_text(&event.kind), markdown_text(&clip(&event.summary, 1500)))
        }));
        let mut facts: Vec<Value> = Vec::new();
        if let Some(place) = place(event) {
            facts.push(json!({ "title": "Where", "value": markdown_text(&place) }));
        }
        facts.extend(facts_of(event).map(|(k, v)| json!({ "title": k, "value": v })));
        if !facts.is_empty() {
            body.push(json!({ "type": "FactSet", "facts": facts }));
        }
        body.push(json!({
            "type": "ActionSet",
            "actions": [{ "type": "Action.OpenUrl", "title": "Open in Sluice", "url": link(event, batch.public_url) }]
        }));
    }
    if let Some(more) = more(batch.events) {
        body.push(json!({ "type": "TextBlock", "wrap": true, "isSubtle": true, "text": more }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body
            }
        }]
    })
}

fn facts_of(event: &ChangeEvent) -> impl Iterator<Item = (String, String)> {
    facts(event)
        .into_iter()
        .map(|(k, v)| (markdown_text(&k), markdown_text(&v)))
}

fn discord(batch: &Batch) -> Value {
    let embeds: Vec<Value> = batch
        .events
        .iter()
        .take(MAX_LISTED)
        .map(|event| {
            let mut fields = Vec::new();
            if let Some(place) = place(event) {
                fields.push(json!({ "name": "Where", "value": clip(&place, 200), "inline": true }));
            }
            for (k, v) in facts(event).into_iter().take(6) {
                fields
                    .push(json!({ "name": clip(&k, 100), "value": clip(&v, 100), "inline": true }));
            }
            json!({
                "title": clip(&event.kind, 100),
                "description": clip(&event.summary, 400),
                "url": link(event, batch.public_url),
                "color": color(&event.kind),
                "timestamp": iso(event.at),
                "fields": fields,
            })
        })
        .collect();
    let mut content = clip(&title(batch.events), 300);
    if let Some(more) = more(batch.events) {
        content.push_str(&format!("\n{more}"));
    }
    json!({
        "username": "Sluice",
        "content": content,
        "embeds": embeds,
        // Nobody is pinged by what a commit title says.
        "allowed_mentions": { "parse": [] }
    })
}

fn webhook(batch: &Batch) -> Value {
    let events: Vec<Value> = batch
        .events
        .iter()
        .map(|e| {
            let parse = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or(Value::Null)
            };
            json!({
                "id": e.id,
                "at": iso(e.at),
                "kind": e.kind,
                "actor": e.actor,
                "service": e.service,
                "environment": e.environment,
                "subject": e.subject,
                "summary": e.summary,
                "url": link(e, batch.public_url),
                "before": parse(&e.before),
                "after": parse(&e.after),
            })
        })
        .collect();
    json!({
        "idempotency_key": batch.key,
        "title": title(batch.events),
        "events": events,
    })
}

fn email(batch: &Batch) -> Value {
    let mut text = String::new();
    for event in batch.events {
        text.push_str(&format!("{} — {}\n", event.kind, iso(event.at)));
        if let Some(place) = place(event) {
            text.push_str(&format!("Where: {place}\n"));
        }
        text.push_str(&format!("{}\n", clip(&event.summary, 2000)));
        for (k, v) in facts(event) {
            text.push_str(&format!("  {k}: {v}\n"));
        }
        text.push_str(&format!("{}\n\n", link(event, batch.public_url)));
    }
    text.push_str(&format!("-- \nSluice · message {}\n", batch.key));
    json!({ "subject": format!("[Sluice] {}", title(batch.events)), "text": text })
}

/// One plain line for previews and chat fallbacks.
fn fallback(batch: &Batch) -> String {
    let first = &batch.events[0];
    format!(
        "{} — {}",
        title(batch.events),
        link(first, batch.public_url)
    )
}

fn more(events: &[ChangeEvent]) -> Option<String> {
    (events.len() > MAX_LISTED).then(|| {
        format!(
            "and {} more: the change log has them all",
            events.len() - MAX_LISTED
        )
    })
}

/// Red for what failed, amber for what waits, green for what went well.
fn color(kind: &str) -> u32 {
    let verb = kind.rsplit('.').next().unwrap_or("");
    match verb {
        "failed" | "rolled_back" | "aborted" | "opened" | "exposed" | "rejected" => 0xd9_53_4f,
        "needed" | "blocked" | "held" | "paused" | "requested" => 0xf0_ad_4e,
        "succeeded" | "promoted" | "done" | "recovered" | "resolved" | "approved" => 0x5c_b8_5c,
        _ => 0x5b_c0_de,
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// At most `n` characters, with `…` when cut; control characters become spaces.
fn clip(text: &str, n: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    if clean.chars().count() <= n {
        return clean;
    }
    let mut cut: String = clean.chars().take(n.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Slack's mrkdwn: `&`, `<` and `>` escaped (so `<!channel>` cannot be
/// written), and `@` followed by a word joiner so Mattermost mentions nobody.
fn slack_text(text: &str) -> String {
    no_mentions(
        &text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// Markdown in an Adaptive Card: a link written from outside is broken
/// (a word joiner between `]` and `(`), so it shows as text and leads nowhere.
fn markdown_text(text: &str) -> String {
    no_mentions(&text.replace("](", "]\u{2060}("))
}

fn no_mentions(text: &str) -> String {
    text.replace('@', "@\u{2060}")
}

/// A name as one path segment (names are already checked; this is belt and braces).
fn path_part(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(
        id: i64,
        kind: &str,
        subject: &str,
        summary: &str,
        after: Option<Value>,
    ) -> ChangeEvent {
        ChangeEvent {
            id,
            at: 1_795_000_000_000 + id * 1000,
            actor: "sluice".into(),
            kind: kind.into(),
            service: Some("shop".into()),
            environment: Some("prod".into()),
            subject: subject.into(),
            summary: summary.into(),
            before: None,
            after: after.map(|v| v.to_string()),
        }
    }

    fn rolled_back() -> ChangeEvent {
        event(
            7,
            "experiment.rolled_back",
            "experiment 3",
            "experiment 3 rolled back v5 in prod at 5%: B's error rate 4.10% is above A's 0.20%",
            Some(
                json!({ "action": "roll_back", "weight": 5, "b": { "error_rate": 0.041, "requests": 1200 } }),
            ),
        )
    }

    fn batch(events: &[ChangeEvent]) -> Batch<'_> {
        Batch {
            events,
            public_url: "https://sluice.example.com/",
            key: "k-1",
        }
    }

    #[test]
    fn each_kind_has_its_shape() {
        let events = [rolled_back()];
        for kind in ChannelKind::ALL {
            insta::assert_snapshot!(
                kind.as_str(),
                serde_json::to_string_pretty(&payload(kind, &batch(&events))).unwrap()
            );
        }
    }

    #[test]
    fn links_go_to_the_page_the_event_is_about() {
        let cases = [
            ("promotion 4", "/promotions/4"),
            ("experiment 3", "/experiments/3"),
            ("INC-2", "/incidents/INC-2"),
            ("run 12", "/runs/12"),
            ("R3", "/rules"),
            ("deployment 9", "/services/shop/environments/prod"),
            ("promotion 4/../../x", "/services/shop/environments/prod"),
        ];
        for (subject, path) in cases {
            let e = event(1, "x.y", subject, "", None);
            assert_eq!(
                link(&e, "http://h:1/"),
                format!("http://h:1{path}"),
                "{subject}"
            );
        }
    }

    #[test]
    fn a_burst_is_one_message_that_counts_what_it_does_not_list() {
        let events: Vec<ChangeEvent> = (0..12)
            .map(|i| {
                event(
                    i,
                    "deployment.failed",
                    &format!("deployment {i}"),
                    &format!("deployment {i} failed"),
                    None,
                )
            })
            .collect();
        assert_eq!(title(&events), "12 events: 12 × deployment.failed");
        let slack = payload(ChannelKind::Slack, &batch(&events));
        let blocks = slack["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 1 + MAX_LISTED + 1);
        assert!(blocks.last().unwrap().to_string().contains("and 2 more"));
        let discord = payload(ChannelKind::Discord, &batch(&events));
        assert_eq!(discord["embeds"].as_array().unwrap().len(), MAX_LISTED);
        let webhook = payload(ChannelKind::Webhook, &batch(&events));
        assert_eq!(webhook["events"].as_array().unwrap().len(), 12);
    }

    #[test]
    fn text_from_a_commit_mentions_nobody_and_links_nowhere() {
        let evil = event(
            1,
            "release.created",
            "run 1",
            "fix <!channel> @everyone [click](http://evil.example) <http://evil.example|x>",
            None,
        );
        let events = [evil];
        // Slack parses mrkdwn (the fallback and the sections), not plain_text headers.
        let slack = payload(ChannelKind::Slack, &batch(&events));
        let mrkdwn = format!("{} {}", slack["text"], slack["blocks"][1]["text"]["text"]);
        assert!(
            !mrkdwn.contains("<!channel>") && !mrkdwn.contains("<http://evil"),
            "{mrkdwn}"
        );
        assert!(!slack.to_string().contains("@everyone"));
        let teams = payload(ChannelKind::Teams, &batch(&events)).to_string();
        assert!(!teams.contains("[click](http"));
        assert!(!teams.contains("@everyone"));
        let discord = payload(ChannelKind::Discord, &batch(&events));
        assert_eq!(discord["allowed_mentions"]["parse"], json!([]));
    }
}
