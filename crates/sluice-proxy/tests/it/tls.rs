//! HTTPS at the entry point, with certificates made here (rcgen): h2 by
//! ALPN, a certificate per host by SNI, a renewal served without a failed
//! request, and plain HTTP sent on to HTTPS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use sluice_proxy::tls::{CertFiles, Certificates};
use sluice_proxy::{Limits, Listener, Route, Telemetry};

use super::{backend, healthy};

struct Made {
    files: CertFiles,
    der: Vec<u8>,
    pem: String,
}

/// A self-signed certificate for `host`, written as PEM under `dir`.
fn certificate(dir: &Path, host: &str, tag: &str) -> Made {
    let made = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let files = CertFiles {
        cert: dir.join(format!("{host}-{tag}.crt")),
        key: dir.join(format!("{host}-{tag}.key")),
    };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    Made {
        files,
        der: made.cert.der().to_vec(),
        pem: made.cert.pem(),
    }
}

async fn https_listener(files: Vec<CertFiles>) -> (Listener, Arc<Certificates>) {
    let route = Route::default();
    route.add(healthy("prod-1", backend("one").await, "v1"));
    let certificates = Certificates::load(files).unwrap();
    let listener = Listener::bind_tls(
        "127.0.0.1:0".parse().unwrap(),
        route,
        "prod",
        Telemetry::detached("prod"),
        Limits::default(),
        Some(certificates.clone()),
    )
    .await
    .unwrap();
    (listener, certificates)
}

/// A client that trusts `roots` and finds every test host at `addr`.
fn client(roots: &[&str], addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .resolve("shop.test", addr)
        .resolve("blog.test", addr)
        .pool_max_idle_per_host(0);
    for pem in roots {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// The certificate a handshake naming `host` is given.
async fn served_to(addr: SocketAddr, host: &str) -> Vec<u8> {
    #[derive(Debug)]
    struct AnyCertificate;
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn https_negotiates_h2_and_picks_the_certificate_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let shop = certificate(dir.path(), "shop.test", "1");
    let blog = certificate(dir.path(), "blog.test", "1");
    let (listener, _) = https_listener(vec![shop.files.clone(), blog.files.clone()]).await;
    let port = listener.addr.port();

    let h2 = client(&[&shop.pem, &blog.pem], listener.addr, false);
    let answer = h2
        .get(format!("https://shop.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    assert_eq!(answer.text().await.unwrap(), "one");
    let h1 = client(&[&shop.pem, &blog.pem], listener.addr, true);
    let answer = h1
        .get(format!("https://blog.test:{port}/proto"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    let proto = answer.text().await.unwrap();
    assert!(
        proto.contains("\"https\"") && proto.contains("proto=https"),
        "{proto}"
    );

    assert_eq!(served_to(listener.addr, "shop.test").await, shop.der);
    assert_eq!(served_to(listener.addr, "blog.test").await, blog.der);
    assert_eq!(
        served_to(listener.addr, "other.test").await,
        shop.der,
        "the first for any other name"
    );

    // Plain HTTP to the HTTPS port gets no answer in the clear.
    let plain = reqwest::get(format!("http://{}/", listener.addr)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// Replaces a file as renewal tools do: a new file renamed over the old.
fn replace(from: &Path, to: &PathBuf) {
    let next = to.with_extension("next");
    std::fs::copy(from, &next).unwrap();
    std::fs::rename(&next, to).unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let old = certificate(dir.path(), "shop.test", "old");
    let new = certificate(dir.path(), "shop.test", "new");
    let live = CertFiles {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
    };
    std::fs::copy(&old.files.cert, &live.cert).unwrap();
    std::fs::copy(&old.files.key, &live.key).unwrap();
    let (listener, _) = https_listener(vec![live.clone()]).await;
    let port = listener.addr.port();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        // Each request a new connection, so each is a new handshake.
        let client = client(&[&old.pem, &new.pem], listener.addr, false);
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match client
                    .get(format!("https://shop.test:{port}/"))
                    .send()
                    .await
                {
                    Ok(answer) => answer.status().is_success(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    while sent.load(Ordering::Relaxed) < 50 {
        tokio::task::yield_now().await;
    }
    // The key first, then the certificate: in between they do not match,
    // and the old pair stays served.
    replace(&new.files.key, &live.key);
    replace(&new.files.cert, &live.cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_to(listener.addr, "shop.test").await != new.der {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_switch = sent.load(Ordering::Relaxed);
    while sent.load(Ordering::Relaxed) < at_switch + 50 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
}

#[test]
fn files_that_do_not_belong_together_are_refused_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = certificate(dir.path(), "shop.test", "a");
    let b = certificate(dir.path(), "shop.test", "b");
    let mismatched = CertFiles {
        cert: a.files.cert.clone(),
        key: b.files.key.clone(),
    };
    let error = Certificates::load(vec![mismatched]).unwrap_err();
    assert!(error.contains("do not belong together"), "{error}");
    let missing = CertFiles {
        cert: dir.path().join("none.crt"),
        key: a.files.key.clone(),
    };
    let error = Certificates::load(vec![missing]).unwrap_err();
    assert!(error.contains("none.crt"), "{error}");
    std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
    let junk = CertFiles {
        cert: a.files.cert.clone(),
        key: dir.path().join("junk.key"),
    };
    assert!(
        Certificates::load(vec![junk])
            .unwrap_err()
            .contains("junk.key")
    );
}

#[tokio::test]
async fn plain_http_is_sent_on_to_https_but_for_acme_challenges() {
    let stop = tokio_util::sync::CancellationToken::new();
    let addr =
        sluice_proxy::redirect_to_https("127.0.0.1:0".parse().unwrap(), 8443, None, stop.clone())
            .await
            .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = http
        .get(format!("http://{addr}/cart?item=7"))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 308);
    assert_eq!(
        answer.headers()["location"],
        "https://shop.test:8443/cart?item=7"
    );
    let challenge = http
        .get(format!("http://{addr}/.well-known/acme-challenge/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 404);
    stop.cancel();
}
