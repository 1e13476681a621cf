//! Notifications end to end: real receivers on loopback standing in for
//! Slack, Teams, Discord and a signed webhook (each checks its payload's
//! shape), a local SMTP server with STARTTLS (aiosmtpd), retries as the
//! receiver asks, bursts collapsed, a kill -9 between an event and its
//! delivery, and an approval reached from the message.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::{GitRepo, Server, copy_fixture, each_database, tempdir};

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    raw: Vec<u8>,
    body: Value,
    at: Instant,
}

/// A status, and a `Retry-After` to send with it.
type Answer = (u16, Option<&'static str>);
type Script = HashMap<String, VecDeque<Answer>>;

/// An HTTP server on a port of its own that records every request by path
/// and answers each path from its script (then 200).
struct Receiver {
    url: String,
    got: Arc<Mutex<HashMap<String, Vec<Received>>>>,
}

impl Receiver {
    async fn start(script: &[(&str, &[Answer])]) -> Receiver {
        let got: Arc<Mutex<HashMap<String, Vec<Received>>>> = Arc::default();
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(
            script
                .iter()
                .map(|(p, answers)| (p.to_string(), answers.iter().copied().collect()))
                .collect(),
        ));
        let (record, answers) = (got.clone(), script.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (record, answers) = (record.clone(), answers.clone());
                async move {
                    let path = uri.path().to_string();
                    record
                        .lock()
                        .unwrap()
                        .entry(path.clone())
                        .or_default()
                        .push(Received {
                            headers,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            raw: body.to_vec(),
                            at: Instant::now(),
                        });
                    let next = answers
                        .lock()
                        .unwrap()
                        .get_mut(&path)
                        .and_then(|q| q.pop_front());
                    let (status, retry_after) = next.unwrap_or((200, None));
                    let mut response = axum::response::Response::new(axum::body::Body::from("ok"));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(after) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", after.parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, got }
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    async fn wait(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = self.on(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} of {n} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn add_channel(server: &Server, name: &str, kind: &str, url: &str, extra: &[&str]) -> String {
    let mut args = vec!["channel", "add", name, "--kind", kind, "--url", url];
    args.extend_from_slice(extra);
    ok(&server.cli(&args))
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The message a channel's latest message is, once `pick` accepts it.
async fn message_of(server: &Server, channel: &str, pick: impl Fn(&Value) -> bool) -> Value {
    server
        .wait_for(&format!("/messages?channel={channel}"), channel, pick)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_channel_gets_its_own_shape_and_retries_follow_the_receiver() {
    each_database(|dir, db| async move {
        let receiver = Receiver::start(&[
            ("/flaky", &[(500, None), (500, None), (500, None)]),
            ("/limited", &[(429, Some("2"))]),
            ("/gone", &[(404, None)]),
        ])
        .await;
        let server = Server::start(&dir.join("data"), db.as_deref());
        let every = ["--on", "token.created", "--wait", "0s", "--interval", "0s"];
        let r = &receiver.url;
        for (name, kind, path) in [
            ("slack", "slack", "/slack"),
            ("teams", "teams", "/teams"),
            ("discord", "discord", "/discord"),
            ("flaky", "slack", "/flaky"),
            ("limited", "slack", "/limited"),
            ("gone", "slack", "/gone"),
        ] {
            add_channel(&server, name, kind, &format!("{r}{path}"), &every);
        }
        let key = "a-signing-key-of-the-team-0123";
        let mut signed: Vec<&str> = vec!["--signing-key", key];
        signed.extend_from_slice(&every);
        add_channel(&server, "hook", "webhook", &format!("{r}/hook"), &signed);
        let made = add_channel(&server, "hook2", "webhook", &format!("{r}/hook2"), &[]);
        assert_eq!(
            made.lines().last().unwrap().len(),
            64,
            "a made-up key, shown once: {made}"
        );
        let listed = ok(&server.cli(&["channel", "list"]));
        assert!(
            listed.contains("token.created") && !listed.contains(r.as_str()),
            "{listed}"
        );

        // One event: a token made for ana.
        server.token_for("ana", "viewer", &[]).await;

        let slack = &receiver.wait("/slack", 1).await[0];
        let section = slack.body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(
            slack.body["blocks"][1]["text"]["type"], "mrkdwn",
            "{:#}",
            slack.body
        );
        assert!(
            section.contains("*token.created*") && section.contains("ana"),
            "{section}"
        );
        assert!(
            section.contains(&format!("<{}/changelog|Open in Sluice>", server.url)),
            "{section}"
        );
        assert!(slack.body["text"].as_str().unwrap().contains("ana"));

        let teams = &receiver.wait("/teams", 1).await[0].body;
        let card = &teams["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert!(
            card["content"]["body"].as_array().unwrap().len() >= 2,
            "{teams:#}"
        );

        let discord = &receiver.wait("/discord", 1).await[0].body;
        assert_eq!(
            discord["embeds"][0]["title"], "token.created",
            "{discord:#}"
        );
        assert_eq!(discord["allowed_mentions"]["parse"], json!([]));

        // The generic webhook is signed over its timestamp and body.
        let hook = &receiver.wait("/hook", 1).await[0];
        let timestamp = header(hook, "x-sluice-timestamp");
        let expected =
            sluice_notify::deliver::signature(key, timestamp.parse().unwrap(), &hook.raw);
        assert_eq!(header(hook, "x-sluice-signature-256"), expected);
        let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
        assert!((0..300).contains(&age), "a fresh timestamp: {age}");
        assert_eq!(
            header(hook, "idempotency-key"),
            hook.body["idempotency_key"].as_str().unwrap()
        );
        assert_eq!(hook.body["events"][0]["kind"], "token.created");
        assert!(receiver.on("/hook2").is_empty(), "hook2 has no routes");

        // 500 three times, then 200: four attempts of one message, delivered once.
        let sent = message_of(&server, "flaky", |m| m["status"] == "sent").await;
        let flaky = receiver.on("/flaky");
        assert_eq!(flaky.len(), 4);
        let key0 = header(&flaky[0], "idempotency-key");
        assert!(flaky.iter().all(|f| header(f, "idempotency-key") == key0));
        let shown = server.get(&format!("/messages/{}", sent["id"])).await;
        let attempts = shown["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 4, "{shown:#}");
        assert!(attempts[..3].iter().all(|a| a["http_status"] == 500));
        assert!(attempts[3]["error"].is_null());

        // 429 with Retry-After: 2 is tried again two seconds later.
        message_of(&server, "limited", |m| m["status"] == "sent").await;
        let limited = receiver.on("/limited");
        assert_eq!(limited.len(), 2);
        assert!(limited[1].at - limited[0].at >= Duration::from_secs(2));

        // 404 is not retried; it shows with its error and is sent again by hand.
        let failed = message_of(&server, "gone", |m| m["status"] == "failed").await;
        let error = failed["last_error"].as_str().unwrap();
        assert!(
            error.contains("answered 404") && error.contains("not retried"),
            "{error}"
        );
        assert_eq!(receiver.on("/gone").len(), 1);
        ok(&server.cli(&["channel", "retry", &failed["id"].to_string()]));
        message_of(&server, "gone", |m| m["status"] == "sent").await;
        assert_eq!(receiver.on("/gone").len(), 2);

        // A test message goes out at once; one that cannot keeps the URL to itself.
        let tested = ok(&server.cli(&["channel", "test", "slack"]));
        assert!(tested.contains("a test message went to slack"), "{tested}");
        let test = &receiver.wait("/slack", 2).await[1];
        assert!(
            test.body["text"]
                .as_str()
                .unwrap()
                .contains("this channel works")
        );
        add_channel(
            &server,
            "dead",
            "slack",
            "http://127.0.0.1:1/services/T0/B0/s3cr3t",
            &[],
        );
        let out = server.cli(&["channel", "test", "dead"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("not delivered"),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cr3t"), "{stderr}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_one_message_and_a_kill_before_delivery_loses_and_repeats_nothing() {
    let dir = tempdir();
    let receiver = Receiver::start(&[]).await;
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let url = format!("{}/hook", receiver.url);
    add_channel(
        &server,
        "hook",
        "webhook",
        &url,
        &["--on", "token.*", "--wait", "15s"],
    );
    for i in 0..10 {
        server.token_for(&format!("bot-{i}"), "viewer", &[]).await;
    }
    let waiting = server.get("/messages").await;
    assert_eq!(waiting, json!([]), "still gathering the burst");

    // Killed between the events and their delivery; the outbox has them.
    server.kill_hard();
    let mut server = Server::start(&data, None);
    let got = receiver.wait("/hook", 1).await;
    let events = got[0].body["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        10,
        "ten tokens, one message: {:#}",
        got[0].body
    );
    assert!(
        got[0].body["title"]
            .as_str()
            .unwrap()
            .starts_with("10 events: 10 × token.created")
    );
    message_of(&server, "hook", |m| m["status"] == "sent").await;

    // A restart after delivery sends nothing again: the next message is the only other one.
    server.stop();
    let server = Server::start(&data, None);
    ok(&server.cli(&["token", "create", "--name", "late", "--role", "viewer"]));
    let got = receiver.wait("/hook", 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].body["events"][0]["summary"]
            .as_str()
            .map(|s| s.contains("late")),
        Some(true)
    );
    assert_ne!(
        header(&got[0], "idempotency-key"),
        header(&got[1], "idempotency-key")
    );
}

/// Python with aiosmtpd, installed under the target directory when missing.
fn python_with_aiosmtpd() -> (String, Option<PathBuf>) {
    let has = |path: Option<&Path>| {
        let mut check = Command::new("python3");
        check.args(["-c", "import aiosmtpd"]);
        if let Some(p) = path {
            check.env("PYTHONPATH", p);
        }
        check.status().is_ok_and(|s| s.success())
    };
    if has(None) {
        return ("python3".into(), None);
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-aiosmtpd");
    if !has(Some(&target)) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&target)
            .arg("aiosmtpd")
            .status()
            .expect("pip");
        assert!(
            status.success(),
            "pip could not install aiosmtpd (PyPI) for the SMTP test"
        );
    }
    ("python3".into(), Some(target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_with_a_login_to_a_real_smtp_server() {
    let dir = tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let inbox = dir.path().join("inbox.jsonl");
    let (python, path) = python_with_aiosmtpd();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp/receiver.py");
    let mut smtp = Command::new(python);
    smtp.arg(&script)
        .arg(&cert_file)
        .arg(&key_file)
        .arg("pa:ss@word")
        .arg(&inbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(p) = path {
        smtp.env("PYTHONPATH", p);
    }
    let mut smtp = smtp.spawn().unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(smtp.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let port = port.trim().to_string();
    assert!(
        port.parse::<u16>().is_ok(),
        "the SMTP server printed {port:?}"
    );

    let server = Server::start(&dir.path().join("data"), None);
    let smtp_url = format!("smtp://sluice:pa%3Ass%40word@127.0.0.1:{port}");
    ok(&server.cli(&[
        "channel",
        "add",
        "mail",
        "--kind",
        "email",
        "--smtp",
        &smtp_url,
        "--from",
        "sluice@example.com",
        "--to",
        "team@example.com",
        "--to",
        "oncall@example.com",
        "--ca-file",
        cert_file.to_str().unwrap(),
        "--on",
        "token.created",
        "--wait",
        "0s",
    ]));
    server.token_for("ana", "viewer", &[]).await;
    let sent = message_of(&server, "mail", |m| m["status"] != "pending").await;
    assert_eq!(sent["status"], "sent", "{sent:#}");
    let ok_test = server.cli(&["channel", "test", "mail"]);
    assert!(
        ok_test.status.success(),
        "{}",
        String::from_utf8_lossy(&ok_test.stderr)
    );
    let _ = smtp.kill();
    let _ = smtp.wait();

    let mails: Vec<Value> = std::fs::read_to_string(&inbox)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail["tls"], true, "STARTTLS before anything was said");
    assert_eq!(mail["authenticated"], true);
    assert_eq!(mail["from"], "sluice@example.com");
    assert_eq!(
        mail["to"],
        json!(["team@example.com", "oncall@example.com"])
    );
    let data = mail["data"].as_str().unwrap();
    assert!(
        data.contains("Subject: [Sluice] ") && data.contains("token"),
        "{data}"
    );
    assert!(
        data.contains(&format!("{}/changelog", server.url)),
        "{data}"
    );
    assert!(
        mails[1]["data"]
            .as_str()
            .unwrap()
            .contains("this channel works")
    );

    // A wrong password is refused for good and says so, without the password.
    let bad = format!("smtp://sluice:wrong-pass@127.0.0.1:{port}");
    ok(&server.cli(&[
        "channel",
        "add",
        "mail",
        "--kind",
        "email",
        "--smtp",
        &bad,
        "--from",
        "sluice@example.com",
        "--to",
        "team@example.com",
        "--ca-file",
        cert_file.to_str().unwrap(),
    ]));
    let out = server.cli(&["channel", "test", "mail"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("wrong-pass"),
        "{stderr}"
    );
}

/// Signs a browser in with a token; answers its session cookie and where it was sent.
pub(crate) async fn sign_in(base: &str, token: &str, next: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{base}/login?next={next}"))
        .send()
        .await
        .unwrap();
    let login_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = form.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let signed = http
        .post(format!("{base}/login"))
        .header("cookie", login_cookie)
        .form(&[("csrf", csrf.as_str()), ("token", token), ("next", next)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303, "{}", signed.text().await.unwrap());
    let session = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let location = signed.headers()["location"].to_str().unwrap().to_string();
    (session, location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_routes_send_an_approval_request_whose_link_leads_to_approving() {
    let dir = tempdir();
    let receiver = Receiver::start(&[]).await;
    let server = Server::start_with(
        &dir.path().join("data"),
        None,
        &["--public-url", "https://sluice.example.test/"],
    );
    add_channel(
        &server,
        "team-chat",
        "slack",
        &format!("{}/team", receiver.url),
        &["--wait", "0s"],
    );
    let ana = server
        .token_for("ana", "approver", &["release-managers"])
        .await;
    let bo = server
        .token_for("bo", "approver", &["release-managers"])
        .await;
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let spec = format!(
        "{}notify:\n  - {{ on: [approval.needed, deployment.failed], env: [pre-prod], to: [team-chat] }}\n",
        crate::cd::shop_spec("")
    );
    repo.commit("shop v1", &[("sluice.yaml", &spec)]);
    server.add_repo(&repo);
    server.wait_env("shop", "dev", 1, 1).await;

    let (status, promotion) = server
        .post_as(
            &ana,
            "/promotions",
            json!({ "service": "shop", "to": "pre-prod" }),
        )
        .await;
    assert_eq!(status, 201, "{promotion:#}");
    let id = promotion["id"].as_i64().unwrap();
    let got = receiver.wait("/team", 1).await;
    let text = got[0].body["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.starts_with("*approval.needed* · shop in pre-prod"),
        "{text}"
    );
    assert!(
        text.contains("0 of 1 approvals") && text.contains("sluice approve"),
        "{text}"
    );
    let link = format!("https://sluice.example.test/promotions/{id}");
    assert!(text.contains(&format!("<{link}|Open in Sluice>")), "{text}");
    assert_eq!(
        receiver.on("/team").len(),
        1,
        "dev's events and other kinds are not routed here"
    );

    // The link's page asks for a sign-in first, then offers the approval.
    let path = format!("/promotions/{id}");
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(
        anonymous.headers()["location"],
        format!("/login?next=/promotions/{id}")
    );
    let (session, location) = sign_in(&server.url, &bo, &path).await;
    assert_eq!(location, path);
    let page = reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("Approve promotion {id}")), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let approved = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}{path}/approve", server.url))
        .header("cookie", &session)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 303);
    server.wait_promotion(id, |p| p["status"] == "done").await;
}
