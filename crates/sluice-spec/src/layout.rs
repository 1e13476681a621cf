//! Where Sluice keeps things under its data directory: the store, CI's
//! mirrors, workspaces and artifacts, releases, environments and replays.
//! Every path under it is made here, and every path made from a name goes
//! through [`inside`], so a name can never point outside the directory it
//! belongs in.

use std::path::{Path, PathBuf};

use crate::paths::{PathEscape, inside};

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

type Checked = Result<PathBuf, PathEscape>;

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Layout {
            root: data_dir.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database, when the store is not PostgreSQL.
    pub fn database(&self) -> PathBuf {
        self.root.join("sluice.db")
    }

    /// Files no one but the server may read: the database with SQLite's
    /// journal files (secrets, token digests) and the first admin token.
    pub fn private_files(&self) -> [PathBuf; 4] {
        let database = self.database();
        let beside = |suffix: &str| {
            let mut name = database.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        [
            beside("-wal"),
            beside("-shm"),
            self.initial_admin_token(),
            database.clone(),
        ]
    }

    /// The first admin token, readable by the server's user only.
    pub fn initial_admin_token(&self) -> PathBuf {
        self.root.join("initial-admin-token")
    }

    /// A remote repository's mirror, which the server reads commits from.
    pub fn mirror(&self, repo: &str) -> Checked {
        inside(&self.root.join("mirrors"), &format!("{repo}.git"))
    }

    /// The checkout a CI run works in.
    pub fn workspace(&self, run_id: i64) -> PathBuf {
        self.root.join("workspaces").join(format!("run-{run_id}"))
    }

    /// Where artifacts are kept, each once, by their sha256.
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts").join("sha256")
    }

    /// The artifact with this digest; only 64 hex digits name one.
    pub fn artifact(&self, sha256: &str) -> Checked {
        artifact_in(&self.artifacts(), sha256)
    }

    /// A rule replay's scratch directory: its copy of the data, its instance.
    pub fn replay(&self, id: &str) -> Checked {
        inside(&self.root.join("replays"), id)
    }

    /// A release's files, unpacked once: `releases/SERVICE/vN`.
    pub fn release(&self, service: &str, number: i64) -> Checked {
        inside(&self.root.join("releases"), service).map(|dir| dir.join(format!("v{number}")))
    }

    pub fn env(&self, service: &str, env: &str) -> Checked {
        inside(&inside(&self.root.join("envs"), service)?, env)
    }

    /// The certificates an agent's host serves for the environment's entry
    /// point, as the server sent them.
    pub fn host_tls(&self, service: &str, env: &str) -> Checked {
        Ok(self.env(service, env)?.join("tls"))
    }

    /// The environment's data: its instances' `DATA_DIR`, and nobody else's.
    pub fn data(&self, service: &str, env: &str) -> Checked {
        Ok(self.env(service, env)?.join("data"))
    }

    pub fn snapshots(&self, service: &str, env: &str) -> Checked {
        Ok(self.env(service, env)?.join("snapshots"))
    }

    /// B's copy of the environment's data during experiment deployment `deployment`.
    pub fn experiment_data(&self, service: &str, env: &str, deployment: i64) -> Checked {
        Ok(self
            .env(service, env)?
            .join("experiments")
            .join(format!("deployment-{deployment}")))
    }

    /// Config files rendered for one release in one environment.
    pub fn config(&self, service: &str, env: &str, number: i64) -> Checked {
        Ok(self
            .env(service, env)?
            .join("config")
            .join(format!("v{number}")))
    }

    /// The entry point's ACME account, certificate and key.
    pub fn acme(&self, service: &str, env: &str) -> Checked {
        Ok(self.env(service, env)?.join("acme"))
    }

    pub fn access_log(&self, service: &str, env: &str) -> Checked {
        Ok(self.env(service, env)?.join("access.log"))
    }

    /// An instance's working directory: its release laid out where it may write.
    pub fn instance_workdir(&self, service: &str, env: &str, instance: &str) -> Checked {
        inside(&self.env(service, env)?.join("instances"), instance)
    }

    pub fn instance_log(&self, service: &str, env: &str, instance: &str) -> Checked {
        inside(
            &self.env(service, env)?.join("logs"),
            &format!("{instance}.log"),
        )
    }
}

/// Where the artifact with this digest lives under `store_dir`.
pub fn artifact_in(store_dir: &Path, sha256: &str) -> Checked {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PathEscape {
            parent: store_dir.display().to_string(),
            part: sha256.chars().take(80).collect(),
            why: "an artifact is named by its sha256, 64 hex digits",
        });
    }
    Ok(store_dir
        .join(&sha256[..2])
        .join(format!("{sha256}.tar.gz")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_a_path_is_refused() {
        let layout = Layout::new(Path::new("/srv/sluice"));
        assert_eq!(
            layout.data("shop", "prod").unwrap(),
            Path::new("/srv/sluice/envs/shop/prod/data")
        );
        assert!(
            layout.data("..", "..").is_err(),
            "the data directory itself"
        );
        assert!(layout.env("shop", "../../x").is_err());
        assert!(layout.release("../etc", 1).is_err());
        assert!(layout.instance_log("shop", "prod", "../../../x").is_err());
        assert!(layout.instance_workdir("shop", "prod", "../data").is_err());
        assert!(layout.artifact("../../../../etc/passwd").is_err());
        assert!(layout.mirror("../x").is_err());
        assert!(layout.replay("..").is_err());
    }
}
