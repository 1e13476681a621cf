//! Which agent's host an environment's next instance goes to: a pure
//! decision over the agents that could take it.

/// An online agent whose labels match the environment's `hosts:`.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub name: String,
    /// The instances of the environment's release being placed that its
    /// host runs now.
    pub of_env: usize,
    /// Every instance its host runs now.
    pub total: usize,
    /// Its host's memory that the instances placed there leave, in MiB (as
    /// far as they declare theirs, `run.memory`).
    pub free_mb: u64,
    /// Its host's cores that they leave, in thousandths (`run.cores`).
    pub free_millicores: u64,
}

/// What one instance declares it needs of its host; none: not weighed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Need {
    pub memory_mb: Option<u64>,
    pub millicores: Option<u64>,
}

impl Need {
    pub(crate) fn of(run: &sluice_spec::RunSpec) -> Need {
        Need {
            memory_mb: run.memory_mb,
            millicores: run.millicores,
        }
    }

    /// Whether `candidate`'s host has room for it.
    fn fits(self, candidate: &Candidate) -> bool {
        self.memory_mb.is_none_or(|mb| candidate.free_mb >= mb)
            && self
                .millicores
                .is_none_or(|m| candidate.free_millicores >= m)
    }

    pub(crate) fn is_declared(self) -> bool {
        self.memory_mb.is_some() || self.millicores.is_some()
    }
}

/// Among the hosts with room for `need`: spread, the host with the fewest
/// of the release's instances (then the fewest in all, then by name, so
/// that the choice is stable); together, the host that already runs it,
/// else the least busy.
pub(crate) fn choose(candidates: &[Candidate], spread: bool, need: Need) -> Option<&Candidate> {
    let room = |c: &&Candidate| need.fits(c);
    candidates.iter().filter(room).min_by(|a, b| {
        let key = |c: &Candidate| {
            let together = if spread {
                c.of_env
            } else {
                usize::from(c.of_env == 0)
            };
            (together, c.total, c.name.clone())
        };
        key(a).cmp(&key(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(of: &[(&str, usize, usize)]) -> Vec<Candidate> {
        of.iter()
            .map(|(name, of_env, total)| Candidate {
                name: name.to_string(),
                of_env: *of_env,
                total: *total,
                free_mb: 1024,
                free_millicores: 2000,
            })
            .collect()
    }

    #[test]
    fn an_instance_goes_only_where_its_memory_is_free() {
        let mut candidates = hosts(&[("web-1", 0, 0), ("web-2", 1, 1)]);
        candidates[0].free_mb = 256;
        let chosen = |memory_mb| {
            let need = Need {
                memory_mb,
                millicores: None,
            };
            choose(&candidates, true, need).map(|c| c.name.as_str())
        };
        assert_eq!(chosen(None), Some("web-1"), "no need declared: by count");
        assert_eq!(chosen(Some(256)), Some("web-1"));
        assert_eq!(chosen(Some(512)), Some("web-2"), "web-1 is too full");
        assert_eq!(chosen(Some(2048)), None, "no host has room");
    }

    #[test]
    fn an_instance_goes_only_where_its_cores_and_memory_are_free() {
        let mut candidates = hosts(&[("web-1", 0, 0), ("web-2", 1, 1), ("web-3", 2, 2)]);
        candidates[0].free_millicores = 250;
        candidates[1].free_mb = 100;
        let table: &[(Option<u64>, Option<u64>, Option<&str>)] = &[
            // memory MiB, millicores → chosen
            (None, Some(250), Some("web-1")),
            (None, Some(500), Some("web-2")),
            (Some(200), Some(500), Some("web-3")),
            (Some(200), Some(2500), None),
        ];
        for (memory_mb, millicores, expected) in table {
            let need = Need {
                memory_mb: *memory_mb,
                millicores: *millicores,
            };
            assert_eq!(
                choose(&candidates, true, need).map(|c| c.name.as_str()),
                *expected,
                "{need:?}"
            );
        }
    }

    #[test]
    fn instances_spread_over_hosts_or_stay_together() {
        type Hosts<'a> = &'a [(&'a str, usize, usize)];
        let table: &[(Hosts, bool, Option<&str>)] = &[
            // hosts (name, of the environment, in all), spread → chosen
            (&[], true, None),
            (&[("web-1", 0, 0), ("web-2", 0, 0)], true, Some("web-1")),
            (&[("web-1", 1, 1), ("web-2", 0, 0)], true, Some("web-2")),
            (&[("web-1", 1, 1), ("web-2", 1, 1)], true, Some("web-1")),
            // Equal for the environment: the one less busy with others.
            (&[("web-1", 1, 5), ("web-2", 1, 2)], true, Some("web-2")),
            // Together: where the environment already runs.
            (&[("web-1", 0, 0), ("web-2", 2, 9)], false, Some("web-2")),
            (&[("web-1", 0, 3), ("web-2", 0, 1)], false, Some("web-2")),
        ];
        for (candidates, spread, expected) in table {
            let candidates = hosts(candidates);
            assert_eq!(
                choose(&candidates, *spread, Need::default()).map(|c| c.name.as_str()),
                *expected,
                "{candidates:?}, spread {spread}"
            );
        }
    }
}
