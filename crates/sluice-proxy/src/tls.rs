//! HTTPS at the entry point: certificates and keys from PEM files, the one
//! a client names by SNI chosen per handshake, and all of them read again
//! when their files change, so that a renewed certificate is served to the
//! next connection without dropping any. With ACME, the files may not
//! exist yet, and TLS-ALPN-01 challenges are answered here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::acme::{ACME_TLS_ALPN, Challenges};
use rustls::crypto::ring::{default_provider, sign::any_supported_type};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

/// How often the files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A certificate chain and its key, as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificates an entry point serves, in the order given: the first
/// is served to a client that names no host, or one that none is valid for.
pub struct Certificates {
    files: Vec<CertFiles>,
    loaded: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// The files' modification times and sizes when last read.
    stamps: Mutex<Vec<Stamp>>,
    /// ACME challenges under way, when the files come from ACME.
    challenges: Option<Arc<Challenges>>,
}

type Stamp = Option<(SystemTime, u64)>;

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish()
    }
}

impl Certificates {
    /// Reads every pair; any that does not load is an error naming its file.
    pub fn load(files: Vec<CertFiles>) -> Result<Arc<Certificates>, String> {
        if files.is_empty() {
            return Err("HTTPS needs at least one certificate and key".into());
        }
        let stamps = files.iter().map(stamp).collect();
        let loaded = read_all(&files)?;
        Ok(Arc::new(Certificates {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            stamps: Mutex::new(stamps),
            challenges: None,
        }))
    }

    /// The certificate ACME keeps in `files`, served once it is there (a
    /// handshake before then fails), and the TLS-ALPN-01 challenges
    /// answered meanwhile.
    pub fn from_acme(files: CertFiles, challenges: Arc<Challenges>) -> Arc<Certificates> {
        let files = vec![files];
        let (stamps, loaded) = match read_all(&files) {
            Ok(loaded) => (files.iter().map(stamp).collect(), loaded),
            Err(_) => (vec![None], Vec::new()),
        };
        Arc::new(Certificates {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            stamps: Mutex::new(stamps),
            challenges: Some(challenges),
        })
    }

    /// Reads the files again if any changed since the last read. A pair
    /// that does not load (a renewal half written) keeps the old ones
    /// served, and says why.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now: Vec<Stamp> = self.files.iter().map(stamp).collect();
        let mut stamps = self.stamps.lock().unwrap();
        if *stamps == now {
            return Ok(false);
        }
        let loaded = read_all(&self.files)?;
        self.loaded.store(Arc::new(loaded));
        *stamps = now;
        Ok(true)
    }

    /// A rustls configuration that asks this store for its certificate:
    /// TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.challenges.is_some() {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Arc::new(config))
    }

    /// The certificate for `name`: the first that is valid for it, else the first.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let valid_for = |key: &CertifiedKey, name: &str| {
            let (Some(leaf), Ok(name)) = (key.cert.first(), ServerName::try_from(name)) else {
                return false;
            };
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
        };
        name.and_then(|name| loaded.iter().find(|k| valid_for(k, name)))
            .or_else(|| loaded.first())
            .cloned()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_check = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if let (true, Some(challenges)) = (acme_check, &self.challenges) {
            return challenges.tls_alpn_certificate(hello.server_name()?);
        }
        self.pick(hello.server_name())
    }
}

fn stamp(files: &CertFiles) -> Stamp {
    let meta = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    // Either file changing counts: the later time, both sizes summed.
    let (c, k) = (meta(&files.cert)?, meta(&files.key)?);
    Some((c.0.max(k.0), c.1 + k.1))
}

fn read_all(files: &[CertFiles]) -> Result<Vec<Arc<CertifiedKey>>, String> {
    files.iter().map(read_pair).collect()
}

fn read_pair(files: &CertFiles) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "{}: not a PEM certificate chain ({e})",
                files.cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: not a PEM private key ({e})", files.key.display()))?;
    let signing = any_supported_type(&key)
        .map_err(|e| format!("{}: a key rustls cannot use ({e})", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together ({e})",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(Arc::new(certified))
}
