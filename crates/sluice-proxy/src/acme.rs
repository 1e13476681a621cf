//! Certificates from an ACME server (RFC 8555, Let's Encrypt's protocol):
//! the challenges the entry point answers while the server checks it, one
//! order from account to certificate, the account kept between orders, and
//! the pure decision of when the next order is due.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path under which HTTP-01 challenges are asked for.
pub const HTTP_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Renew this long before expiry at the latest…
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// …and an order that failed is tried again after this, doubled per failure…
pub const RETRY_FIRST: Duration = Duration::from_secs(60);

/// …up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// How long one order may take, from the account to the certificate.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The answers to the challenges of the orders under way, read by the
/// listeners: key authorizations by HTTP-01 token, and TLS-ALPN-01
/// certificates by domain.
#[derive(Default)]
pub struct Challenges {
    http: Mutex<HashMap<String, String>>,
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    /// The key authorization for an HTTP-01 `token`, while it is asked for.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.lock().unwrap().get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `domain`, while it is asked for.
    pub fn tls_alpn_certificate(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn
            .lock()
            .unwrap()
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    fn clear(&self) {
        self.http.lock().unwrap().clear();
        self.tls_alpn.lock().unwrap().clear();
    }
}

/// How the ACME server checks that we answer for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `GET http://DOMAIN/.well-known/acme-challenge/TOKEN` on port 80.
    Http01,
    /// A handshake on port 443 offering only `acme-tls/1`.
    TlsAlpn01,
}

/// What to ask an ACME server for.
#[derive(Clone, Debug)]
pub struct OrderRequest {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// A CA certificate (PEM) to trust the directory by, else the system's.
    pub ca: Option<PathBuf>,
    pub challenge: Challenge,
    /// Where the account's key and URL are kept between orders.
    pub account_file: PathBuf,
}

/// A certificate chain and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What the next order waits for, from the certificate now served (if
/// any) and the failures since the last success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The DNS names the certificate is valid for.
    pub names: Vec<String>,
}

/// When the next order starts: at once without a certificate or with one
/// that lacks a domain; else when a third of its lifetime is left, and no
/// later than 30 days before it expires; after a failure, once the backoff
/// has passed (`failed`: failures in a row and the last one's time).
pub fn next_order(
    cert: Option<&CertFacts>,
    domains: &[String],
    failed: Option<(u32, SystemTime)>,
) -> SystemTime {
    let due = match cert {
        Some(cert) if domains.iter().all(|d| cert.names.contains(d)) => {
            let lifetime = cert
                .not_after
                .duration_since(cert.not_before)
                .unwrap_or_default();
            cert.not_after - RENEW_BEFORE.min(lifetime / 3)
        }
        _ => SystemTime::UNIX_EPOCH,
    };
    match failed {
        Some((failures, at)) => due.max(at + retry_after(failures)),
        None => due,
    }
}

/// The wait after `failures` failed orders in a row: 1 min, 2, 4 … 6 h.
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

/// The validity and names of the first certificate of a PEM chain.
pub fn cert_facts(chain_pem: &[u8]) -> Result<CertFacts, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem)
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertFacts {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        names,
    })
}

/// One order, from the account to the certificate, answering its
/// challenges through `challenges` (cleared when it ends, however it ends).
pub async fn issue(request: &OrderRequest, challenges: &Challenges) -> Result<Issued, String> {
    let ordered = tokio::time::timeout(ORDER_TIMEOUT, order(request, challenges)).await;
    challenges.clear();
    ordered.unwrap_or_else(|_| {
        Err(format!(
            "the order took more than {} s",
            ORDER_TIMEOUT.as_secs()
        ))
    })
}

async fn order(request: &OrderRequest, challenges: &Challenges) -> Result<Issued, String> {
    let account = account(request).await?;
    let identifiers: Vec<Identifier> = request
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("the ACME server refused the order: {e}"))?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization =
            authorization.map_err(|e| format!("could not read an authorization: {e}"))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let kind = match request.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authorization
            .challenge(kind.clone())
            .ok_or_else(|| format!("the ACME server offers no {kind:?} challenge"))?;
        let key_authorization = challenge.key_authorization();
        match request.challenge {
            Challenge::Http01 => {
                challenges.http.lock().unwrap().insert(
                    challenge.token.clone(),
                    key_authorization.as_str().to_string(),
                );
            }
            Challenge::TlsAlpn01 => {
                let domain = match challenge.identifier().identifier {
                    Identifier::Dns(domain) => domain.to_ascii_lowercase(),
                    other => return Err(format!("cannot answer for {other:?}")),
                };
                let certificate =
                    tls_alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                challenges
                    .tls_alpn
                    .lock()
                    .unwrap()
                    .insert(domain, certificate);
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("could not tell the ACME server to check: {e}"))?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("the order did not become ready: {e}"))?;
    if status != OrderStatus::Ready {
        let problems = problems(&mut order).await;
        return Err(format!("the order is {status:?}{problems}"));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("could not finalize the order: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("no certificate came: {e}"))?;
    Ok(Issued { chain_pem, key_pem })
}

/// Why the server turned down the order's authorizations, if it said.
async fn problems(order: &mut instant_acme::Order) -> String {
    let mut said = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(error) = &challenge.error {
                said.push(error.to_string());
            }
        }
    }
    match said.is_empty() {
        true => String::new(),
        false => format!(": {}", said.join("; ")),
    }
}

/// A self-signed certificate for `domain` carrying the key authorization's
/// digest in the critical acmeIdentifier extension (RFC 8737).
fn tls_alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let failed = |e: rcgen::Error| format!("could not make the TLS-ALPN-01 certificate: {e}");
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    let signing = any_supported_type(&PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| format!("could not use the TLS-ALPN-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The account file: the directory it was made on and its credentials.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The account kept in `account_file` for this directory, or a new one
/// (kept there, readable by its owner only).
async fn account(request: &OrderRequest) -> Result<Account, String> {
    let builder = || match &request.ca {
        Some(ca) => Account::builder_with_root(ca)
            .map_err(|e| format!("{}: not a CA certificate ({e})", ca.display())),
        None => Account::builder().map_err(|e| format!("no HTTPS client for ACME: {e}")),
    };
    if let Some(stored) = read_account(&request.account_file)
        && stored.directory == request.directory
    {
        return builder()?
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| format!("the ACME account could not be used: {e}"));
    }
    let contact = request
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect::<Vec<_>>();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            request.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("could not open an account at {}: {e}", request.directory))?;
    let stored = StoredAccount {
        directory: request.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    write_private(&request.account_file, &json)
        .map_err(|e| format!("{}: {e}", request.account_file.display()))?;
    Ok(account)
}

fn read_account(path: &Path) -> Option<StoredAccount> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes `bytes` to `path` through a file beside it, readable by its
/// owner only, so that a crash leaves the old file or the new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cert(lifetime_days: u32, names: &[&str]) -> CertFacts {
        let not_before = SystemTime::UNIX_EPOCH + 1000 * DAY;
        CertFacts {
            not_before,
            not_after: not_before + lifetime_days * DAY,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn when_the_next_order_starts() {
        let domains = vec!["shop.example.com".to_string()];
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        type Case = (
            &'static str,
            Option<CertFacts>,
            Option<(u32, SystemTime)>,
            SystemTime,
        );
        let cases: Vec<Case> = vec![
            (
                "no certificate: at once",
                None,
                None,
                SystemTime::UNIX_EPOCH,
            ),
            (
                "90 days: 30 days before expiry",
                Some(cert(90, &["shop.example.com"])),
                None,
                start + 60 * DAY,
            ),
            (
                "6 days: with a third of its life left",
                Some(cert(6, &["shop.example.com"])),
                None,
                start + 4 * DAY,
            ),
            (
                "a domain missing: at once",
                Some(cert(90, &["www.example.com"])),
                None,
                SystemTime::UNIX_EPOCH,
            ),
            (
                "first failure: a minute later",
                None,
                Some((1, start)),
                start + Duration::from_secs(60),
            ),
            (
                "fourth failure: 8 minutes later",
                None,
                Some((4, start)),
                start + Duration::from_secs(480),
            ),
            (
                "a failure before renewal is due waits for renewal",
                Some(cert(90, &["shop.example.com"])),
                Some((1, start)),
                start + 60 * DAY,
            ),
        ];
        for (case, facts, failed, expected) in cases {
            assert_eq!(
                next_order(facts.as_ref(), &domains, failed),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn retries_double_up_to_six_hours() {
        let waits: Vec<u64> = [1, 2, 3, 9, 10, 100]
            .map(|n| retry_after(n).as_secs())
            .to_vec();
        assert_eq!(waits, vec![60, 120, 240, 15360, 21600, 21600]);
    }

    #[test]
    fn the_facts_of_a_certificate() {
        let made =
            rcgen::generate_simple_self_signed(vec!["Shop.example.com".to_string()]).unwrap();
        let facts = cert_facts(made.cert.pem().as_bytes()).unwrap();
        assert_eq!(facts.names, vec!["shop.example.com".to_string()]);
        assert!(facts.not_after > facts.not_before);
        assert!(cert_facts(b"not a certificate").is_err());
    }
}
