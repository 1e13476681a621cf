//! Where continuous deployment keeps things under the data directory. Every
//! path made from a name goes through [`inside`], so a name can never point
//! outside the directory it belongs in.

use std::path::{Path, PathBuf};

use sluice_spec::paths::{PathEscape, inside};

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

    pub fn artifact(&self, sha256: &str) -> Checked {
        sluice_ci::artifact::stored_path(&self.root.join("artifacts").join("sha256"), sha256)
    }

    /// A release's files, unpacked once: `releases/SERVICE/vN`.
    pub fn release(&self, service: &str, number: i64) -> Checked {
        inside(&self.root.join("releases"), service).map(|dir| dir.join(format!("v{number}")))
    }

    pub fn env(&self, service: &str, env: &str) -> Checked {
        inside(&inside(&self.root.join("envs"), service)?, env)
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
    }
}
