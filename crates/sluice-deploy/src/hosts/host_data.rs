//! An environment's data on an agent's host (`host/data/SERVICE/ENV` in the
//! agent's data directory): seeded the first time one of its instances
//! starts there (then marked in `host/seeded/SERVICE/ENV`), snapshotted
//! before the first instance of each release, copied for an experiment's B
//! that works on a copy (`host/copies/SERVICE/ENV/experiment-N`), and the
//! copies dropped once no instance uses them. The local agent keeps the
//! data where the server beside it does (`envs/SERVICE/ENV/data` in the
//! server's data directory), which fills and snapshots it as its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::wire::{DataSeeded, Hosted};
use crate::runtime::InstanceSpec;

/// The start of the name of B's copy of an environment's data.
const COPY_PREFIX: &str = "experiment-";

/// The data of the environments on one agent's host.
pub(crate) struct HostData {
    /// The agent's data directory.
    root: PathBuf,
    /// The local agent's: the layout of the server beside it.
    server: Option<sluice_spec::Layout>,
}

impl HostData {
    pub(crate) fn new(root: &Path, server_data_dir: Option<&Path>) -> HostData {
        HostData {
            root: root.to_path_buf(),
            server: server_data_dir.map(sluice_spec::Layout::new),
        }
    }

    /// The environment's data directory on this host. The names were
    /// checked when the instance arrived.
    fn env_dir(&self, hosted: &Hosted) -> PathBuf {
        let in_place = (self.server.as_ref())
            .and_then(|layout| layout.data(&hosted.service, &hosted.environment).ok());
        in_place.unwrap_or_else(|| {
            self.root
                .join("data")
                .join(&hosted.service)
                .join(&hosted.environment)
        })
    }

    /// The directory the instance works on (its `DATA_DIR`): B's copy when
    /// it works on one, else the environment's.
    pub(crate) fn dir_of(&self, hosted: &Hosted) -> PathBuf {
        match &hosted.data.copy {
            Some(copy) => self
                .root
                .join("copies")
                .join(&hosted.service)
                .join(&hosted.environment)
                .join(copy),
            None => self.env_dir(hosted),
        }
    }

    /// Makes the instance's data directory ready before it starts: the
    /// environment's seeded (once) and snapshotted (once per release),
    /// and B's copy made (once per experiment).
    /// What it seeded, when it did.
    pub(crate) async fn prepare(
        &self,
        hosted: &Hosted,
        spec: &InstanceSpec,
    ) -> Result<Option<DataSeeded>> {
        if let Some(copy) = &hosted.data.copy
            && !(copy.starts_with(COPY_PREFIX) && super::wire::is_safe_name(copy))
        {
            bail!(
                "the server sent a copy of data named `{}`",
                copy.escape_debug()
            );
        }
        let seeded = self.seed(hosted, spec).await?;
        self.snapshot(hosted).await?;
        self.copy(hosted, spec.uid).await?;
        Ok(seeded)
    }

    /// Fills the environment's data directory on this host the first time
    /// one of its instances starts here: with its seed (`data.seed`), run
    /// in the instance's files as the server runs it, then marked done. A
    /// seed that fails leaves nothing behind and runs again at the next
    /// start. Data already there (a seed added by a later release) is
    /// never seeded over.
    async fn seed(&self, hosted: &Hosted, spec: &InstanceSpec) -> Result<Option<DataSeeded>> {
        let data_dir = self.env_dir(hosted);
        let done = self
            .root
            .join("seeded")
            .join(&hosted.service)
            .join(&hosted.environment);
        let holds_data = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
        let Some(seed) = (hosted.data.seed.as_ref()).filter(|_| !done.exists() && !holds_data)
        else {
            std::fs::create_dir_all(&data_dir)?;
            return Ok(None);
        };
        let data = sluice_spec::DataSpec {
            seed: Some(seed.script.clone()),
            copy_from: None,
            scrub: None,
            snapshots: 0,
            seed_timeout: Duration::from_millis(seed.timeout_ms.clamp(1000, 86_400_000)),
        };
        // The instance's variables but where it listens: the seed serves nothing.
        let vars = spec
            .env
            .iter()
            .filter(|(k, _)| !["HOST", "PORT", "DATA_DIR"].contains(&k.as_str()))
            .cloned()
            .collect();
        let run_as = crate::data::RunAs {
            uid: spec.uid,
            vars,
        };
        let filled = crate::data::fill(&data, &data_dir, &spec.workdir, None, &run_as)
            .await
            .with_context(|| format!("{}'s data on this host", hosted.environment))?;
        std::fs::create_dir_all(done.parent().context("a mark has a parent")?)?;
        std::fs::write(&done, &seed.script)?;
        tracing::info!(service = %hosted.service, env = %hosted.environment, ?filled, "the environment's data seeded on this host");
        Ok(match filled {
            crate::data::Filled::Seeded(seed, printed) => Some(DataSeeded {
                service: hosted.service.clone(),
                environment: hosted.environment.clone(),
                seed,
                printed,
                at: sluice_store::now_ms(),
            }),
            _ => None,
        })
    }

    /// Snapshots the environment's data on this host before the first
    /// instance of a release starts here (`envs/SERVICE/ENV/snapshots/
    /// before-vN.tar.gz`, the newest `data.snapshots` kept), as the server
    /// does before each deployment: what to go back to when a release
    /// damages it.
    async fn snapshot(&self, hosted: &Hosted) -> Result<()> {
        let release = hosted.env.iter().find(|(k, _)| k == "SLUICE_RELEASE");
        // The server beside the local agent takes them itself.
        let Some((_, release)) =
            release.filter(|_| hosted.data.snapshots > 0 && self.server.is_none())
        else {
            return Ok(());
        };
        if !super::wire::is_safe_name(release) {
            bail!(
                "the server sent a release named `{}`",
                release.escape_debug()
            );
        }
        let dir =
            sluice_spec::Layout::new(&self.root).snapshots(&hosted.service, &hosted.environment)?;
        let name = format!("before-{release}");
        if dir.join(format!("{name}.tar.gz")).exists() {
            return Ok(());
        }
        let (data, keep) = (self.env_dir(hosted), hosted.data.snapshots);
        let taken =
            tokio::task::spawn_blocking(move || crate::data::snapshot(&data, &dir, &name, keep))
                .await??;
        if let Some(path) = taken {
            tracing::info!(service = %hosted.service, env = %hosted.environment, path = %path.display(), "data snapshot taken on this host");
        }
        Ok(())
    }

    /// Makes B's copy of the environment's data on this host, the first
    /// time one of B's instances starts here; B's others share it.
    async fn copy(&self, hosted: &Hosted, uid: Option<u32>) -> Result<()> {
        let copy = self.dir_of(hosted);
        if hosted.data.copy.is_none() || copy.exists() {
            return Ok(());
        }
        let data = self.env_dir(hosted);
        let target = copy.clone();
        tokio::task::spawn_blocking(move || crate::data::copy_for_experiment(&data, &target, uid))
            .await??;
        tracing::info!(service = %hosted.service, env = %hosted.environment, copy = %copy.display(), "B's copy of the data made on this host");
        Ok(())
    }

    /// Removes every copy of data that none of `wanted` works on: the
    /// experiment that made it is over.
    pub(crate) fn drop_unused_copies(&self, wanted: &[Hosted]) {
        let in_use: Vec<PathBuf> = wanted.iter().map(|h| self.dir_of(h)).collect();
        let children = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        for service in children(&self.root.join("copies")) {
            for env in children(&service) {
                for copy in children(&env) {
                    if !in_use.contains(&copy) {
                        tracing::info!(copy = %copy.display(), "dropping B's copy of the data: its experiment is over");
                        let _ = std::fs::remove_dir_all(&copy);
                    }
                }
            }
        }
    }
}
