//! The web UI's handlers through the axum `Router`: every page, sign-in
//! and its limits, roles (401, 403) and CSRF refusals.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;
use sluice_server::{ServeOptions, Server};
use sluice_store::IncidentTrigger;
use sluice_store::{NewIncident, NewRule, Role};
use tower::ServiceExt;

struct Ui {
    router: Router,
    server: Server,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    location: String,
    cookies: Vec<String>,
    body: String,
}

impl Ui {
    async fn start() -> Ui {
        Ui::start_in(tempfile::tempdir().unwrap()).await
    }

    /// Stops the server and starts another on the same data directory.
    async fn restart(self) -> Ui {
        let Ui { server, _dir, .. } = self;
        server.run(async {}).await.unwrap();
        Ui::start_in(_dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> Ui {
        let server = Server::start(ServeOptions {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            database: None,
            poll_interval: std::time::Duration::from_secs(60),
            parallelism: Some(1),
            keep_workspaces: false,
            isolation: Default::default(),
            log_cap: 16 << 20,
            public_url: None,
            agent_lease: sluice_ci::DEFAULT_AGENT_LEASE,
            jobs_on_agents: false,
            controller_lease: std::time::Duration::from_secs(10),
            advertise: None,
            socket_keeper: None,
            local_agent: None,
        })
        .await
        .unwrap();
        Ui {
            router: server.router(),
            server,
            _dir: dir,
        }
    }

    async fn token(&self, name: &str, role: Role) -> String {
        let state = self.server.state();
        let (_, token) = state
            .tokens
            .mint(&state.store, name, role, &[], "test")
            .await
            .unwrap();
        token
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let cookies = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        Answer {
            status,
            location,
            cookies,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        let request = Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn post(&self, path: &str, cookie: &str, form: &str) -> Answer {
        let request = Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        self.send(request).await
    }

    /// Signs in; returns the session cookie and the CSRF token of its forms.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let answer = self.try_sign_in(token).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = pair(&answer.cookies, "sluice_session");
        let page = self.get("/", &cookie).await;
        (cookie, hidden(&page.body, "csrf"))
    }

    async fn try_sign_in(&self, token: &str) -> Answer {
        let form = self.get("/login", "").await;
        let login = pair(&form.cookies, "sluice_login");
        let csrf = hidden(&form.body, "csrf");
        self.post(
            "/login",
            &login,
            &format!("token={}&csrf={csrf}&next=%2F", urlencode(token)),
        )
        .await
    }
}

/// `name=value` of a `Set-Cookie`.
fn pair(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie {name} in {cookies:?}"))
        .to_string()
}

/// The value of the first hidden input named `name`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_is_protected() {
    let ui = Ui::start().await;
    let page = ui.get("/promotions", "").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location, "/login?next=/promotions");
    let post = ui.post("/promotions/1/approve", "", "csrf=x").await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);

    // The sign-in form's CSRF token must come back with its cookie.
    let form = ui.get("/login", "").await;
    let csrf = hidden(&form.body, "csrf");
    assert!(form.cookies[0].contains("HttpOnly") && form.cookies[0].contains("SameSite=Strict"));
    let forged = ui
        .post(
            "/login",
            "sluice_login=other",
            &format!("token=x&csrf={csrf}"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // Wrong tokens: refused, then limited.
    for _ in 0..5 {
        let wrong = ui.try_sign_in("slc_nope_nope").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(
            wrong.body.contains("does not sign you in"),
            "{}",
            wrong.body
        );
    }
    let token = ui.token("vic", Role::Viewer).await;
    let limited = ui.try_sign_in(&token).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited.body.contains("Too many failed sign-ins"),
        "{}",
        limited.body
    );
}

#[tokio::test]
async fn a_session_outlives_a_restart_and_ends_with_its_token() {
    let ui = Ui::start().await;
    let token = ui.token("ada", Role::Approver).await;
    let (cookie, csrf) = ui.sign_in(&token).await;
    let ui = ui.restart().await;
    let page = ui.get("/", &cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(hidden(&page.body, "csrf"), csrf, "the same session");

    // Revoked, the token ends its sessions at once.
    let state = ui.server.state();
    let id = token.split('_').nth(1).unwrap();
    state.store.revoke_token(id, "test").await.unwrap();
    let page = ui.get("/", &cookie).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location.starts_with("/login"), "{}", page.location);
    // A cookie nobody was given opens nothing.
    let forged = ui
        .get("/", &format!("sluice_session={}", "0".repeat(64)))
        .await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_agent_token_cannot_sign_in() {
    let ui = Ui::start().await;
    let token = ui.token("builder-1", Role::Agent).await;
    let refused = ui.try_sign_in(&token).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("cannot sign in"), "{}", refused.body);
    assert!(
        !refused
            .cookies
            .iter()
            .any(|c| c.starts_with("sluice_session="))
    );
}

#[tokio::test]
async fn every_page_renders_for_a_viewer_who_cannot_act() {
    let ui = Ui::start().await;
    let store = &ui.server.state().store;
    let incident = store
        .open_incident(NewIncident {
            service: "shop",
            environment: Some("prod"),
            title: "checkout <fails>",
            trigger_kind: IncidentTrigger::Manual,
            trigger_detail: None,
            actor: "ana",
            first_symptom_at: None,
        })
        .await
        .unwrap();
    store
        .insert_rule(NewRule {
            service: "shop",
            spec: &json!({ "kind": "require_job", "job": "checkout-regression" }),
            note: "checkout needs a test",
            incident_id: Some(incident.id),
            actor: "ana",
            expires_at: None,
            description: "every change must run job `checkout-regression`",
        })
        .await
        .unwrap();
    store
        .record_block(
            "R1",
            "shop",
            Some("prod"),
            "promotion 4 (v4)",
            "v4 failed R1 in pre-prod",
        )
        .await
        .unwrap();
    let viewer = ui.token("vic", Role::Viewer).await;
    let (cookie, csrf) = ui.sign_in(&viewer).await;
    for (path, expect) in [
        ("/", "Overview"),
        ("/", "Open incidents"),
        ("/", "Stopped by rules"),
        ("/", "checkout &#60;fails&#62;"),
        ("/changes", "Changes"),
        ("/agents", "No agent has registered"),
        ("/promotions", "No promotion is waiting"),
        ("/experiments", "No experiment yet"),
        ("/incidents", "checkout &#60;fails&#62;"),
        ("/incidents/1", "Postmortem"),
        ("/incidents/INC-1", "Postmortem"),
        ("/rules", "every change must run job"),
        ("/changelog?kind=rule.", "rule.added"),
        ("/changelog?since=yesterday", "is not a duration"),
        ("/channels", "No channel yet"),
        ("/assets/sluice.css", ":root"),
        ("/assets/sluice.js", "EventSource"),
    ] {
        let page = ui.get(path, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(
            page.body.contains(expect),
            "{path} lacks {expect}: {}",
            page.body
        );
    }
    for path in [
        "/runs/99",
        "/experiments/99",
        "/experiments/99/charts",
        "/incidents/99",
        "/services/shop/environments/prod",
        "/services/shop/diff?a=dev&b=prod",
    ] {
        let missing = ui.get(path, &cookie).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            missing.body.contains("role=\"alert\""),
            "{path}: {}",
            missing.body
        );
    }
    let rules = ui.get("/rules", &cookie).await;
    assert!(
        !rules.body.contains("Reason to disable"),
        "a viewer gets no disable form"
    );

    // The server enforces the roles the pages show.
    let approve = ui
        .post("/promotions/1/approve", &cookie, &format!("csrf={csrf}"))
        .await;
    assert_eq!(approve.status, StatusCode::FORBIDDEN);
    assert!(
        approve.body.contains("needs the approver role"),
        "{}",
        approve.body
    );
    // Every form the pages hide is refused by the same table, steering too.
    for (path, form) in [
        ("/experiments/1/pause", String::new()),
        ("/rules/1/disable", "&reason=x".to_string()),
        ("/channels/hook/remove", String::new()),
        ("/channels/messages/1/retry", String::new()),
    ] {
        let refused = ui.post(path, &cookie, &format!("csrf={csrf}{form}")).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            refused.body.contains("needs the"),
            "{path}: {}",
            refused.body
        );
    }

    // A signed-in browser may read the API, never change through it.
    let read = ui.get("/api/v1/status", &cookie).await;
    assert_eq!(read.status, StatusCode::OK);
    let write = ui.post("/api/v1/promotions/1/approve", &cookie, "").await;
    assert_eq!(write.status, StatusCode::UNAUTHORIZED);

    // Signing out ends the session.
    let out = ui.post("/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(ui.get("/", &cookie).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_approver_acts_only_with_the_form_s_csrf_token() {
    let ui = Ui::start().await;
    let store = &ui.server.state().store;
    store
        .insert_rule(NewRule {
            service: "shop",
            spec: &json!({ "kind": "freeze", "cron": "* * * * *" }),
            note: "",
            incident_id: None,
            actor: "ana",
            expires_at: None,
            description: "no promotion",
        })
        .await
        .unwrap();
    let approver = ui.token("ana", Role::Approver).await;
    let (cookie, csrf) = ui.sign_in(&approver).await;
    let rules = ui.get("/rules", &cookie).await;
    assert!(rules.body.contains("Reason to disable R1"));
    let forged = ui
        .post("/rules/1/disable", &cookie, "csrf=forged&reason=test")
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.body.contains("CSRF"), "{}", forged.body);
    let missing = ui
        .post("/promotions/42/approve", &cookie, &format!("csrf={csrf}"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let disabled = ui
        .post(
            "/rules/1/disable",
            &cookie,
            &format!("csrf={csrf}&reason=the+launch+is+over"),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::SEE_OTHER, "{}", disabled.body);
    let rules = ui.get(&disabled.location, &cookie).await;
    assert!(rules.body.contains("R1 is disabled."), "{}", rules.body);
    assert!(rules.body.contains("the launch is over"));
    assert!(store.rules(None, true).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_admin_adds_a_channel_on_the_page_and_its_secrets_are_never_shown_again() {
    let ui = Ui::start().await;
    let admin = ui.token("ada", Role::Admin).await;
    let (cookie, csrf) = ui.sign_in(&admin).await;
    let form = format!(
        "csrf={csrf}&name=hook&kind=webhook&url=https%3A%2F%2Fhooks.example.com%2Fs3cr3t&on=deployment.failed+incident.*&env=prod"
    );
    let added = ui.post("/channels", &cookie, &form).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let key = added
        .body
        .split("shown only now (receivers check X-Sluice-Signature-256 with it): ")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_else(|| panic!("the made-up key, once: {}", added.body))
        .to_string();
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let listed = ui.get("/channels", &cookie).await;
    assert!(
        listed
            .body
            .contains("deployment.failed in prod, incident.* in prod"),
        "{}",
        listed.body
    );
    assert!(!listed.body.contains(&key) && !listed.body.contains("s3cr3t"));
    let bad = ui
        .post(
            "/channels",
            &cookie,
            &format!("csrf={csrf}&name=x&kind=pager"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("not a kind of channel"), "{}", bad.body);

    let viewer = ui.token("vic", Role::Viewer).await;
    let (vic, vic_csrf) = ui.sign_in(&viewer).await;
    let page = ui.get("/channels", &vic).await;
    assert!(page.body.contains("hook") && !page.body.contains("Add the channel"));
    let refused = ui
        .post("/channels/hook/remove", &vic, &format!("csrf={vic_csrf}"))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let removed = ui
        .post("/channels/hook/remove", &cookie, &format!("csrf={csrf}"))
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    assert!(ui.server.state().store.channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn every_answer_tells_the_browser_to_run_only_our_own_scripts() {
    let ui = Ui::start().await;
    for path in ["/login", "/", "/api/v1/runs", "/assets/sluice.js"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = ui.router.clone().oneshot(request).await.unwrap();
        let headers = response.headers();
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert!(headers.contains_key(header::REFERRER_POLICY), "{path}");
    }
}

#[tokio::test]
async fn only_an_approver_replays_a_health_check_which_would_start_the_release() {
    let ui = Ui::start().await;
    let store = &ui.server.state().store;
    for spec in [
        json!({ "kind": "health_check", "path": "/checkout", "status": 200 }),
        json!({ "kind": "require_job", "job": "checkout-regression" }),
    ] {
        store
            .insert_rule(NewRule {
                service: "shop",
                spec: &spec,
                note: "",
                incident_id: None,
                actor: "ana",
                expires_at: None,
                description: "",
            })
            .await
            .unwrap();
    }
    let developer = ui.token("dev", Role::Developer).await;
    let viewer = ui.token("vic", Role::Viewer).await;
    let replay = |id: i64, token: &str| {
        let (router, token) = (ui.router.clone(), token.to_string());
        async move {
            let request = Request::post(format!("/api/v1/rules/{id}/test"))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"release": 1}"#))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = replay(1, &developer).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("Replaying a rule that starts the release needs the approver role"),
        "{body}"
    );
    // Other kinds replay without running anything: a viewer may ask (the
    // service has no release v1, which is what it is told).
    let (status, body) = replay(2, &viewer).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn bogus_tokens_cost_a_digest_and_are_limited_per_address() {
    let ui = Ui::start().await;
    let token = ui.token("ci-bot", Role::Developer).await;
    let id = token.split('_').nth(1).unwrap().to_string();
    let whoami = |token: String| {
        let router = ui.router.clone();
        async move {
            let request = Request::get("/api/v1/whoami")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (ok, _) = whoami(token.clone()).await;
    assert_eq!(ok, StatusCode::OK);
    // A wrong secret for a real id and an unknown id say the same thing.
    let (wrong, wrong_body) = whoami(format!("slc_{id}_{}", "0".repeat(64))).await;
    let (unknown, unknown_body) = whoami(format!("slc_ffffffffffff_{}", "0".repeat(64))).await;
    assert_eq!(
        (wrong, unknown),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(wrong_body, unknown_body);
    // Thirty at once from one address: the limit holds, then refuses.
    let bogus: Vec<_> = (0..40)
        .map(|i| whoami(format!("slc_{id}_{i:064}")))
        .collect();
    let answers = futures::future::join_all(bogus).await;
    let refused = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        refused,
        40 - (30 - 2),
        "30 failures an address, 2 already spent"
    );
    assert!(answers.iter().all(|(status, _)| *status != StatusCode::OK));
}

#[tokio::test]
async fn the_api_answers_every_error_in_its_shape_and_tells_anonymous_callers_nothing() {
    let ui = Ui::start().await;
    let admin = ui.token("ops", Role::Admin).await;
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {admin}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        ui.send(request.body(body).unwrap())
    };
    for (method, path, status) in [
        ("GET", "/api/v1/no-such-thing", 404),
        ("GET", "/api/v1/runs/abc", 400),
        ("GET", "/api/v1/runs?limit=abc", 400),
        ("GET", "/api/v1/runs?limit=5000", 400),
        ("GET", "/api/v1/runs?limit=0", 400),
        ("DELETE", "/api/v1/runs", 405),
    ] {
        let answer = call(method, path, None).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {path}: {}",
            answer.body
        );
        let error: serde_json::Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|_| panic!("{method} {path} is not JSON: {}", answer.body));
        assert!(error["error"]["code"].is_string(), "{path}: {error}");
        assert!(error["error"]["message"].is_string(), "{path}: {error}");
    }
    let bad_json = ui
        .send(
            Request::post("/api/v1/tokens")
                .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_json.body.contains("\"code\":\"bad_request\""),
        "{}",
        bad_json.body
    );

    // Token names are unique.
    let first = call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "ci-bot", "role": "viewer"})),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "ci-bot", "role": "viewer"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    // An incident only for a service Sluice knows, with a one-line title.
    let unknown = call(
        "POST",
        "/api/v1/incidents",
        Some(json!({"service": "nope", "title": "down"})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);

    // The hook's poke: the same answer for a repository that is not there.
    let poke = |name: &str| {
        ui.send(
            Request::post(format!("/api/v1/repos/{name}/notify"))
                .body(Body::empty())
                .unwrap(),
        )
    };
    let (none, other) = (poke("does-not-exist").await, poke("nor-this").await);
    assert_eq!(
        (none.status, &none.body),
        (StatusCode::ACCEPTED, &other.body)
    );
}

#[tokio::test]
async fn the_openapi_description_covers_every_endpoint_once() {
    let ui = Ui::start().await;
    let answer = ui.get("/api/v1/openapi.json", "").await;
    assert_eq!(answer.status, StatusCode::OK, "served without a token");
    let doc: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut ids = std::collections::HashSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "{id} twice");
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("404") && responses.contains_key("400"),
                "{method} {path}"
            );
            let anonymous = path.ends_with("/notify") || path.starts_with("/hooks/");
            assert_eq!(
                operation.get("security").is_none(),
                anonymous,
                "{method} {path}"
            );
        }
    }
    // Every route of api.rs but the description itself, each method once.
    assert_eq!(ids.len(), 71, "{ids:?}");
    for path in [
        "/runs/{id}/logs/raw",
        "/repos/{name}/secrets/{secret}",
        "/experiments/{id}/{verb}",
        "/agents/{name}/jobs/{job}/source",
        "/agents/{name}/instances/{id}/files",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
}
