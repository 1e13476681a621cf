//! What an open experiment asks of its environment, read from the store
//! and B's release: B's spec and environment, where B's data lives, and the
//! split at its step. Both the experiments loop and a restart that keeps
//! B's instances running read it here.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use sluice_proxy::{Split, Sticky};
use sluice_spec::{AbData, AbStrategy, Environment, Spec};
use sluice_store::{Experiment, Release};

use crate::Inner;

/// What an open experiment is, as its environment's entry point and B's
/// instances need it: B's release, its spec and environment (without the
/// experiment's config overrides), the strategy (its goals replaced by
/// those given by hand), the deployment B's instances belong to, and the
/// step it is at.
pub(crate) struct Plan {
    /// The experiment's id.
    pub id: i64,
    pub b: Release,
    pub spec: Spec,
    pub env: Environment,
    pub overrides: BTreeMap<String, String>,
    pub ab: AbStrategy,
    pub deployment: i64,
    pub step: usize,
}

impl Plan {
    pub(crate) async fn of(inner: &Inner, x: &Experiment) -> Result<Plan> {
        let b = inner.store.release_by_id(x.release_id).await?;
        let (spec, env) = crate::release::release_env(&b, &x.environment)?;
        let mut ab = match &env.strategy {
            sluice_spec::Strategy::Ab(ab) => ab.ramp(),
            _ => AbStrategy::default(),
        };
        // Goals given when it was started by hand replace the strategy's.
        let given: Vec<String> = serde_json::from_str(&x.goals).unwrap_or_default();
        if let Ok(goals) = given
            .iter()
            .map(|g| sluice_spec::parse_goal(g))
            .collect::<Result<Vec<_>, _>>()
            && !goals.is_empty()
        {
            ab.goals = goals;
        }
        let overrides = serde_json::from_str(&x.overrides).unwrap_or_default();
        let deployment = x
            .deployment_id
            .ok_or_else(|| anyhow!("experiment {} has no deployment", x.id))?;
        let step = (x.step.max(0) as usize).min(ab.steps.len() - 1);
        Ok(Plan {
            id: x.id,
            b,
            spec,
            env,
            overrides,
            ab,
            deployment,
            step,
        })
    }

    /// B's environment: the experiment's config overrides on top.
    pub(crate) fn b_env(&self) -> Environment {
        let mut env = self.env.clone();
        env.config.extend(self.overrides.clone());
        env
    }

    /// Where B's instances keep their data: a copy of the environment's
    /// when the strategy says so, else the environment's own.
    pub(crate) fn data_dir(&self, inner: &Inner) -> Result<Option<std::path::PathBuf>> {
        Ok(match &self.env.strategy {
            sluice_spec::Strategy::Ab(ab) if ab.data == AbData::Copy => Some(
                inner
                    .layout
                    .experiment_data(&self.b.service, &self.env.name, self.deployment)?,
            ),
            _ => None,
        })
    }

    /// The split at the experiment's step.
    pub(crate) fn split(&self) -> Result<Split> {
        split_at(&self.ab, self.step)
    }
}

pub(crate) fn split_at(ab: &AbStrategy, step: usize) -> Result<Split> {
    let weight = f64::from(ab.steps[step]);
    Split::new(weight, sticky_of(ab)?, ab.allow_force).map_err(|e| anyhow!(e))
}

pub(crate) fn sticky_of(ab: &AbStrategy) -> Result<Sticky> {
    Ok(match &ab.sticky {
        sluice_spec::Sticky::Cookie => Sticky::Cookie,
        sluice_spec::Sticky::Header(name) => Sticky::Header(
            name.parse()
                .map_err(|_| anyhow!("`{name}` is not a header name"))?,
        ),
    })
}
