//! HTTPS at a host's entry point: the certificates the server sent, kept
//! in the agent's data directory (`envs/SERVICE/ENV/tls/N.crt`, `N.key`,
//! readable by the agent only) and served from there, read again when they
//! change as the server's own files are.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_proxy::tls::{CertFiles, Certificates};

use super::wire::HostCertPair;

/// The files of the `index`th pair in `dir`.
fn files(dir: &Path, index: usize) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{index}.crt")),
        key: dir.join(format!("{index}.key")),
    }
}

/// Writes `pairs` to `dir`, each file only when it changed (so that the
/// listener reads them again only on a renewal) and whole (a crash leaves
/// the old file or the new). None (the server could not read its files)
/// keeps those written before.
pub(crate) fn write(dir: &Path, pairs: &[HostCertPair]) -> io::Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for (index, pair) in pairs.iter().enumerate() {
        let files = files(dir, index);
        for (path, pem) in [(&files.key, &pair.key_pem), (&files.cert, &pair.cert_pem)] {
            if std::fs::read(path).ok().as_deref() != Some(pem.as_bytes()) {
                sluice_proxy::acme::write_private(path, pem.as_bytes())?;
            }
        }
    }
    // Pairs the server no longer sends.
    for index in pairs.len().. {
        let files = files(dir, index);
        if !files.cert.exists() {
            break;
        }
        std::fs::remove_file(&files.cert)?;
        let _ = std::fs::remove_file(&files.key);
    }
    Ok(())
}

/// The certificates written in `dir`, to serve.
pub(crate) fn load(dir: &Path) -> io::Result<Arc<Certificates>> {
    let written: Vec<CertFiles> = (0..)
        .map(|index| files(dir, index))
        .take_while(|files| files.cert.exists())
        .collect();
    Certificates::load(written).map_err(io::Error::other)
}

/// Where the certificates of `service`'s `env` go under the agent's
/// `data_dir`.
pub(crate) fn dir(data_dir: &Path, service: &str, env: &str) -> io::Result<PathBuf> {
    sluice_spec::Layout::new(data_dir)
        .host_tls(service, env)
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> HostCertPair {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        HostCertPair {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
        }
    }

    #[test]
    fn pairs_are_written_once_kept_when_none_come_and_dropped_when_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair("a.test"), pair("b.test"));
        write(dir.path(), &[a.clone(), b.clone()]).unwrap();
        assert!(load(dir.path()).is_ok());
        let key = dir.path().join("0.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is the agent's alone");
        let written = std::fs::metadata(&key).unwrap().modified().unwrap();
        write(dir.path(), &[a.clone(), b]).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().modified().unwrap(),
            written,
            "unchanged: not written again"
        );
        write(dir.path(), &[]).unwrap();
        assert!(dir.path().join("1.crt").exists(), "none sent: kept");
        write(dir.path(), &[a]).unwrap();
        assert!(!dir.path().join("1.crt").exists(), "no longer sent: gone");
        assert!(load(dir.path()).is_ok());
    }

    #[test]
    fn a_certificate_that_does_not_match_its_key_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut mixed = pair("a.test");
        mixed.key_pem = pair("b.test").key_pem;
        write(dir.path(), &[mixed]).unwrap();
        assert!(load(dir.path()).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(
            load(empty.path()).is_err(),
            "nothing written: nothing to serve"
        );
    }
}
