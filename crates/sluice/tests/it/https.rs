//! An environment served over HTTPS end to end: certificate files named in
//! `listen:`, the instance reached through TLS with h2 by ALPN, and plain
//! HTTP sent on to HTTPS.

use crate::hostile::spec;
use crate::support::{GitRepo, Server, copy_fixture, free_port, tempdir};

#[tokio::test]
async fn an_environment_serves_https_from_certificate_files() {
    let dir = tempdir();
    let made = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("shop.crt"), dir.path().join("shop.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let plain = free_port();
    let listen = format!(
        "{{ address: 127.0.0.1:0, tls: {{ cert: {}, key: {} }}, redirect_from: 127.0.0.1:{plain} }}",
        cert.display(),
        key.display()
    );
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("shop", &listen))]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 1).await;
    let addr: std::net::SocketAddr = dev["listen"].as_str().unwrap().parse().unwrap();

    let client = reqwest::Client::builder()
        .resolve("shop.test", addr)
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://shop.test:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.headers()["x-sluice-release"], "v1");

    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{plain}/cart"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://shop.test:{}/cart", addr.port())
    );
}

#[tokio::test]
async fn a_certificate_path_in_the_repository_is_refused_at_validation() {
    let dir = tempdir();
    let file = dir.path().join("sluice.yaml");
    let listen = "{ address: 127.0.0.1:0, tls: { cert: certs/shop.crt, key: /etc/ssl/shop.key } }";
    std::fs::write(&file, spec("shop", listen)).unwrap();
    let out = std::process::Command::new(crate::support::SLUICE)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`certs/shop.crt` is not an absolute path"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_environment_s_limits_hold_its_clients() {
    let dir = tempdir();
    let listen = "{ address: 127.0.0.1:0, limits: { max_body: 1KiB, max_headers: 20 } }";
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("shop", listen))]);
    server.add_repo(&repo);
    let dev = server.wait_env("shop", "dev", 1, 1).await;
    let url = format!("http://{}/", dev["listen"].as_str().unwrap());
    let client = reqwest::Client::new();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let large = client
        .post(&url)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
    let mut many = client.get(&url);
    for i in 0..30 {
        many = many.header(format!("x-field-{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
}
