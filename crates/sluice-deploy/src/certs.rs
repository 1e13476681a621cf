//! Certificates an entry point gets from ACME: one keeper per entry point
//! with `tls: { acme: … }` orders when [`next_order`] says, keeps the chain
//! and key under the environment's directory, has the listener read them,
//! and says what happened in the change log and on the environment's page.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_proxy::acme::{
    Challenge, Challenges, OrderRequest, cert_facts, issue, next_order, retry_after, write_private,
};
use sluice_proxy::tls::{CertFiles, Certificates};
use sluice_spec::{AcmeChallenge, AcmeSpec};
use sluice_store::{NewChangeEvent, Store};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The longest a keeper sleeps before it looks at its certificate again.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

/// An entry point's ACME certificate: what the listeners serve and answer
/// challenges from, and what the keeper last saw.
pub(crate) struct Keeper {
    pub certificates: Arc<Certificates>,
    pub challenges: Arc<Challenges>,
    status: Arc<Mutex<String>>,
    _stop: DropGuard,
}

impl Keeper {
    /// A line for the environment's page: valid until when, or what failed.
    pub fn status(&self) -> String {
        self.status.lock().unwrap().clone()
    }
}

/// Where an environment's ACME files are kept.
pub(crate) struct AcmeFiles {
    pub dir: PathBuf,
}

impl AcmeFiles {
    fn cert(&self) -> CertFiles {
        CertFiles {
            cert: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
        }
    }
}

/// Starts keeping the certificate of `spec` for one environment, until the
/// keeper is dropped.
pub(crate) fn start(
    store: Store,
    service: &str,
    env: &str,
    spec: &AcmeSpec,
    files: AcmeFiles,
) -> std::io::Result<Keeper> {
    std::fs::create_dir_all(&files.dir)?;
    let challenges = Arc::new(Challenges::default());
    let certificates = Certificates::from_acme(files.cert(), challenges.clone());
    let status = Arc::new(Mutex::new("no certificate yet: ordering".to_string()));
    let stop = CancellationToken::new();
    let request = OrderRequest {
        domains: spec.domains.clone(),
        email: spec.email.clone(),
        directory: spec.directory.clone(),
        ca: spec.ca.clone(),
        challenge: match spec.challenge {
            AcmeChallenge::Http01 => Challenge::Http01,
            AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
        },
        account_file: files.dir.join("account.json"),
    };
    let keeping = Keeping {
        store,
        service: service.to_string(),
        env: env.to_string(),
        request,
        files: files.cert(),
        certificates: certificates.clone(),
        challenges: challenges.clone(),
        status: status.clone(),
    };
    let cancelled = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = keeping.run() => {}
            _ = cancelled.cancelled() => {}
        }
    });
    Ok(Keeper {
        certificates,
        challenges,
        status,
        _stop: stop.drop_guard(),
    })
}

struct Keeping {
    store: Store,
    service: String,
    env: String,
    request: OrderRequest,
    files: CertFiles,
    certificates: Arc<Certificates>,
    challenges: Arc<Challenges>,
    status: Arc<Mutex<String>>,
}

impl Keeping {
    async fn run(self) {
        let mut failed: Option<(u32, SystemTime)> = None;
        loop {
            let held = std::fs::read(&self.files.cert)
                .ok()
                .and_then(|pem| cert_facts(&pem).ok());
            let due = next_order(held.as_ref(), &self.request.domains, failed);
            let now = SystemTime::now();
            if let Ok(wait) = due.duration_since(now) {
                if failed.is_none()
                    && let Some(held) = &held
                {
                    self.say(format!(
                        "valid until {}, renewed from {}",
                        when(held.not_after),
                        when(due)
                    ));
                }
                tokio::time::sleep(wait.min(LOOK_EVERY)).await;
                continue;
            }
            let kept = match issue(&self.request, &self.challenges).await {
                Ok(issued) => self.keep(issued, held.is_some()).await,
                Err(error) => Err(error),
            };
            match kept {
                Ok(()) => failed = None,
                Err(error) => {
                    let failures = failed.map_or(1, |(n, _)| n + 1);
                    failed = Some((failures, now));
                    self.failed(&error, failures).await;
                }
            }
        }
    }

    /// Writes the key, then the chain (the listener serves the old pair
    /// until both match), reads them in and says so.
    async fn keep(&self, issued: sluice_proxy::acme::Issued, renewal: bool) -> Result<(), String> {
        let facts = cert_facts(issued.chain_pem.as_bytes())?;
        if next_order(Some(&facts), &self.request.domains, None) <= SystemTime::now() {
            return Err(format!(
                "the ACME server issued a certificate for {} that is due for renewal already",
                facts.names.join(", ")
            ));
        }
        write_private(&self.files.key, issued.key_pem.as_bytes())
            .and_then(|()| write_private(&self.files.cert, issued.chain_pem.as_bytes()))
            .map_err(|e| {
                format!(
                    "{}: could not keep the certificate: {e}",
                    self.files.cert.display()
                )
            })?;
        self.certificates
            .reload_if_changed()
            .map_err(|e| format!("the issued certificate does not load: {e}"))?;
        let until = when(facts.not_after);
        let (kind, verb) = match renewal {
            true => ("certificate.renewed", "renewed"),
            false => ("certificate.issued", "issued"),
        };
        let summary = format!(
            "certificate for {} {verb} by {}, valid until {until}",
            self.request.domains.join(", "),
            self.request.directory
        );
        tracing::info!(service = %self.service, env = %self.env, %summary);
        self.say(format!("valid until {until}"));
        self.record(kind, summary).await;
        Ok(())
    }

    async fn failed(&self, error: &str, failures: u32) {
        let retry = when(SystemTime::now() + retry_after(failures));
        let summary = format!(
            "no certificate for {} from {} ({failures} failure{} in a row): {error}; next try at {retry}",
            self.request.domains.join(", "),
            self.request.directory,
            if failures == 1 { "" } else { "s" }
        );
        tracing::warn!(service = %self.service, env = %self.env, %summary);
        self.say(summary.clone());
        self.record("certificate.failed", summary).await;
    }

    fn say(&self, status: String) {
        *self.status.lock().unwrap() = status;
    }

    async fn record(&self, kind: &str, summary: String) {
        let event = NewChangeEvent {
            actor: "sluice".into(),
            kind: kind.into(),
            service: Some(self.service.clone()),
            environment: Some(self.env.clone()),
            subject: format!("certificate for {}", self.request.domains.join(", ")),
            summary,
            before: None,
            after: None,
        };
        if let Err(e) = self.store.append_change(event).await {
            tracing::warn!(error = %e, "could not record a certificate event");
        }
    }
}

/// A time as people read it, in UTC.
fn when(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}
