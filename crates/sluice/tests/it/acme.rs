//! Certificates from a real ACME server: Debian's `pebble` (Let's
//! Encrypt's test server) with `pebble-challtestsrv` answering its DNS, an
//! environment with `tls: { acme: … }` issued a certificate over HTTP-01
//! and over TLS-ALPN-01, each renewed when a third of its (short) life is
//! left, and served to clients that trust pebble's root.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hostile::spec;
use crate::support::{GitRepo, Server, copy_fixture, free_port, tempdir};

/// How long pebble's certificates are valid: renewed after two thirds.
const VALIDITY_SECONDS: u64 = 15;

/// pebble and its DNS, stopped when dropped.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: u16,
    /// The CA pebble's own HTTPS is signed by (PEM file).
    ca: std::path::PathBuf,
    ca_pem: String,
}

impl Pebble {
    /// Starts pebble checking HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1, where every name resolves.
    fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        for tool in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is needed: apt-get install pebble"
            );
        }
        let (listen, management, dns, challtest) =
            (free_port(), free_port(), free_port(), free_port());
        let ca = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        let (cert, key, config) = (
            dir.join("pebble.crt"),
            dir.join("pebble.key"),
            dir.join("pebble.json"),
        );
        std::fs::write(&cert, ca.cert.pem()).unwrap();
        std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
        let settings = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECONDS,
        }});
        std::fs::write(&config, settings.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest}")])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleeps before checks; no reused authorizations, so
            // that a renewal is checked again; no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let pebble = Pebble {
            children: vec![challtestsrv, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            ca: cert,
            ca_pem: ca.cert.pem(),
        };
        pebble.wait_listening(listen);
        pebble.wait_listening(dns);
        pebble
    }

    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pebble never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The root pebble issues under (made afresh each start).
    async fn root(&self) -> reqwest::Certificate {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        reqwest::Certificate::from_pem(&pem).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The serial of the certificate `addr` serves for `name`, over a TLS
/// connection that trusts pebble's root only: the served certificate is
/// checked as a browser would.
async fn served(addr: SocketAddr, name: &str, root: &reqwest::Certificate) -> Option<String> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root.clone())
        .resolve(name, addr)
        .tls_info(true)
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://{name}:{}/", addr.port()))
        .send()
        .await
        .ok()?;
    assert_eq!(answer.status(), 200);
    let info = answer.extensions().get::<reqwest::tls::TlsInfo>()?;
    let der = info.peer_certificate()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.raw_serial_as_string())
}

async fn events(server: &Server, kind: &str) -> Vec<Value> {
    let all = server.get(&format!("/changelog?kind={kind}")).await;
    all.as_array().cloned().unwrap_or_default()
}

/// Issues over `challenge`, then waits for the renewal and a new serial.
async fn issued_and_renewed(challenge: &str) {
    let dir = tempdir();
    let (https_port, plain) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), plain, https_port);
    let listen = format!(
        "{{ address: 127.0.0.1:{https_port}, redirect_from: 127.0.0.1:{plain}, tls: {{ acme: {{ domains: [shop.example.com, www.shop.example.com], email: ops@shop.example.com, directory: \"{}\", ca: {}, challenge: {challenge} }} }} }}",
        pebble.directory,
        pebble.ca.display()
    );
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("shop", &listen))]);
    server.add_repo(&repo);
    server.wait_env("shop", "dev", 1, 1).await;
    let addr: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let root = pebble.root().await;

    let issued = server
        .wait_for(
            "/changelog?kind=certificate.issued",
            "the certificate issued",
            |_| true,
        )
        .await;
    assert!(
        issued["summary"]
            .as_str()
            .unwrap()
            .contains("shop.example.com, www.shop.example.com"),
        "{issued:#}"
    );
    let first = served(addr, "shop.example.com", &root)
        .await
        .expect("the issued certificate is served");
    assert!(
        served(addr, "www.shop.example.com", &root).await.is_some(),
        "the second domain is served too"
    );

    // A third of 15 s left: renewed, and the next handshakes get the new one.
    server
        .wait_for(
            "/changelog?kind=certificate.renewed",
            "the certificate renewed",
            |_| true,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = served(addr, "shop.example.com", &root).await;
        if now.as_ref().is_some_and(|serial| *serial != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(events(&server, "certificate.failed").await.is_empty());

    // The environment's page says where the certificate comes from and until when.
    let env = server.get("/services/shop/environments/dev").await;
    let https = env["facets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == "network: https")
        .unwrap_or_else(|| panic!("no https facet: {env:#}"));
    assert!(
        https[1].as_str().unwrap().contains("valid until"),
        "{https}"
    );
    // Kept under the data directory, the key readable by its owner only.
    let kept = dir.path().join("data/envs/shop/dev/acme");
    for file in ["account.json", "key.pem", "cert.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(kept.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{file} is private");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_and_renewed_over_http_01() {
    issued_and_renewed("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_and_renewed_over_tls_alpn_01() {
    issued_and_renewed("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_is_a_change_log_event_and_shown() {
    let dir = tempdir();
    // No ACME server listens here.
    let listen = format!(
        "{{ address: 127.0.0.1:0, tls: {{ acme: {{ domains: [shop.example.com], directory: \"https://127.0.0.1:{}/dir\" }} }} }}",
        free_port()
    );
    let server = Server::start(&dir.path().join("data"), None);
    let repo = GitRepo::new(dir.path(), "shop");
    copy_fixture(&repo, "shop");
    repo.commit("v1", &[("sluice.yaml", &spec("shop", &listen))]);
    server.add_repo(&repo);
    server.wait_env("shop", "dev", 1, 1).await;
    let failed = server
        .wait_for(
            "/changelog?kind=certificate.failed",
            "the failed order",
            |_| true,
        )
        .await;
    let summary = failed["summary"].as_str().unwrap();
    assert!(
        summary.contains("no certificate for shop.example.com"),
        "{summary}"
    );
    assert!(summary.contains("next try at"), "{summary}");
    let env = server.get("/services/shop/environments/dev").await;
    assert!(env.to_string().contains("1 failure in a row"), "{env:#}");
}
