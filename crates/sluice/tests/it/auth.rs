//! Tokens and roles over the real API: 401 without a token, 403 without the role.

use serde_json::json;

use crate::support::{Server, each_database};

#[tokio::test]
async fn mutations_need_a_token_with_enough_role() {
    each_database(|dir, db| async move {
        let server = Server::start(&dir.join("data"), db.as_deref());
        let token_file = server.data_dir.join("initial-admin-token");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let anonymous = server
            .request(reqwest::Method::POST, "/repos", None)
            .await
            .json(&json!({"location": "/tmp"}))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        let body: serde_json::Value = anonymous.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");

        let out = server.cli(&["token", "create", "--name", "ci-viewer", "--role", "viewer"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let viewer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(viewer.starts_with("slc_"));
        let who = server
            .request(reqwest::Method::GET, "/whoami", Some(&viewer))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(
            who.json::<serde_json::Value>().await.unwrap()["role"],
            "viewer"
        );
        let forbidden = server
            .request(reqwest::Method::POST, "/repos", Some(&viewer))
            .await
            .json(&json!({"location": "/tmp"}))
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), 403);
        let body: serde_json::Value = forbidden.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("needs the admin role")
        );
        let runs = server
            .request(reqwest::Method::GET, "/runs", Some(&viewer))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(runs.status(), 200, "a viewer may read");

        let bad_role = server.cli(&["token", "create", "--name", "x", "--role", "superuser"]);
        assert!(!bad_role.status.success());
        assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role `superuser`"));

        // Revoking takes effect at once, cache or not.
        let list = server.get("/tokens").await;
        let id = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "ci-viewer")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(server.cli(&["token", "revoke", &id]).status.success());
        let revoked = server
            .request(reqwest::Method::GET, "/runs", Some(&viewer))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 401);
        assert!(
            !server.get("/tokens").await.to_string().contains("argon2"),
            "hashes never leave the server"
        );
    })
    .await;
}

#[tokio::test]
async fn the_initial_token_is_made_once() {
    let dir = crate::support::tempdir();
    let data = dir.path().join("data");
    let first = Server::start(&data, None);
    let token = first.token.clone();
    drop(first);
    let second = Server::start(&data, None);
    assert_eq!(
        second.token, token,
        "a restart keeps the first token and makes no other"
    );
    // Beside it, the one its local agent was given at the first start.
    let tokens = second.get("/tokens").await;
    let mut names: Vec<&str> = (tokens.as_array().unwrap().iter())
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["initial-admin", "local-agent"], "{tokens:#}");
}

/// Every operation that changes something, with the least role it needs
/// (the server's `access` table): one role below is refused with 403 and a
/// message naming the role; the role itself gets past the check (to a 404
/// or 400 here, since nothing exists).
#[tokio::test]
async fn each_operation_needs_its_role_and_no_more() {
    let dir = crate::support::tempdir();
    let server = Server::start(&dir.path().join("data"), None);
    let mut tokens = std::collections::HashMap::new();
    for role in ["viewer", "developer", "approver"] {
        tokens.insert(role, server.token_for(role, role, &[]).await);
    }
    tokens.insert("admin", server.token.clone());
    let below = |role: &str| match role {
        "developer" => "viewer",
        "approver" => "developer",
        _ => "approver",
    };
    let table: &[(&str, &str, &str, serde_json::Value)] = &[
        ("POST", "/runs/999/cancel", "developer", json!({})),
        ("POST", "/promotions", "developer", json!({})),
        ("POST", "/experiments/999/goals", "developer", json!({})),
        ("POST", "/incidents", "developer", json!({})),
        ("POST", "/incidents/999/resolve", "developer", json!({})),
        ("PUT", "/incidents/999/postmortem", "developer", json!({})),
        ("POST", "/messages/999/retry", "developer", json!({})),
        ("POST", "/promotions/999/approve", "approver", json!({})),
        ("POST", "/promotions/999/reject", "approver", json!({})),
        (
            "POST",
            "/services/shop/environments/prod/rollback",
            "approver",
            json!({}),
        ),
        (
            "POST",
            "/services/shop/environments/prod/unpin",
            "approver",
            json!({}),
        ),
        ("POST", "/experiments/999/pause", "approver", json!({})),
        ("POST", "/rules", "approver", json!({})),
        ("POST", "/rules/999/disable", "approver", json!({})),
        ("POST", "/promotions/999/override", "admin", json!({})),
        ("POST", "/repos", "admin", json!({})),
        ("GET", "/repos/shop/secrets", "admin", json!({})),
        ("POST", "/tokens", "admin", json!({})),
        ("POST", "/channels", "admin", json!({})),
        ("DELETE", "/channels/team", "admin", json!({})),
    ];
    let mut wrong = Vec::new();
    for (method, path, role, body) in table {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let send = |token: &str| {
            let (method, token, body) = (method.clone(), token.to_string(), body.clone());
            let server = &server;
            async move {
                server
                    .request(method, path, Some(&token))
                    .await
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let refused = send(&tokens[below(role)]).await;
        let status = refused.status();
        let text = refused.text().await.unwrap();
        if status != 403 || !text.contains(&format!("needs the {role} role")) {
            wrong.push(format!(
                "{method} {path} as {}: {status} {text}",
                below(role)
            ));
        }
        let allowed = send(&tokens[role]).await;
        if allowed.status() == 403 {
            wrong.push(format!("{method} {path} as {role}: 403"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
