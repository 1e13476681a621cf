//! Where continuous deployment keeps things under the data directory.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Layout {
            root: data_dir.to_path_buf(),
        }
    }

    pub fn artifact(&self, sha256: &str) -> PathBuf {
        sluice_ci::artifact::stored_path(&self.root.join("artifacts").join("sha256"), sha256)
    }

    /// A release's files, unpacked once: `releases/SERVICE/vN`.
    pub fn release(&self, service: &str, number: i64) -> PathBuf {
        self.root
            .join("releases")
            .join(service)
            .join(format!("v{number}"))
    }

    pub fn env(&self, service: &str, env: &str) -> PathBuf {
        self.root.join("envs").join(service).join(env)
    }

    /// The environment's data: its instances' `DATA_DIR`, and nobody else's.
    pub fn data(&self, service: &str, env: &str) -> PathBuf {
        self.env(service, env).join("data")
    }

    pub fn snapshots(&self, service: &str, env: &str) -> PathBuf {
        self.env(service, env).join("snapshots")
    }

    /// Config files rendered for one release in one environment.
    pub fn config(&self, service: &str, env: &str, number: i64) -> PathBuf {
        self.env(service, env)
            .join("config")
            .join(format!("v{number}"))
    }

    pub fn instance_log(&self, service: &str, env: &str, instance: &str) -> PathBuf {
        self.env(service, env)
            .join("logs")
            .join(format!("{instance}.log"))
    }
}
