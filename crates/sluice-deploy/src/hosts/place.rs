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
}

/// Among the hosts with `need_mb` free (when the instance declares it):
/// spread, the host with the fewest of the release's instances (then the
/// fewest in all, then by name, so that the choice is stable); together,
/// the host that already runs it, else the least busy.
pub(crate) fn choose(
    candidates: &[Candidate],
    spread: bool,
    need_mb: Option<u64>,
) -> Option<&Candidate> {
    let room = |c: &&Candidate| need_mb.is_none_or(|need| c.free_mb >= need);
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
            })
            .collect()
    }

    #[test]
    fn an_instance_goes_only_where_its_memory_is_free() {
        let mut candidates = hosts(&[("web-1", 0, 0), ("web-2", 1, 1)]);
        candidates[0].free_mb = 256;
        let chosen = |need| choose(&candidates, true, need).map(|c| c.name.as_str());
        assert_eq!(chosen(None), Some("web-1"), "no need declared: by count");
        assert_eq!(chosen(Some(256)), Some("web-1"));
        assert_eq!(chosen(Some(512)), Some("web-2"), "web-1 is too full");
        assert_eq!(chosen(Some(2048)), None, "no host has room");
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
                choose(&candidates, *spread, None).map(|c| c.name.as_str()),
                *expected,
                "{candidates:?}, spread {spread}"
            );
        }
    }
}
