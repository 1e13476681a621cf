//! Goals at the entry point: which users of an experiment convert (or
//! spend), counted per user from their first request while it runs (their
//! exposure), in the variant that exposure gave them. A goal is reached by
//! a request the entry point sees (`POST /checkout` answered 2xx), by a
//! `Sluice-Goal` header the application answers with (removed before the
//! answer leaves), or by `POST /_sluice/goal` from the browser. Each
//! variant's [`Arm`] per goal is kept as users change, so reading them
//! costs nothing per user. A tracker at an entry point on an agent's host
//! also records what it counted as [`GoalEvent`]s, which the server's
//! tracker of the same experiment applies: so goals are counted over every
//! host.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sluice_analysis::goals::Arm;

use crate::split::Variant;
pub use crate::split::user_id;

/// The response header an application reports a user's goal with:
/// `Sluice-Goal: purchase; value=19.99` (several allowed).
pub const GOAL_HEADER: &str = "sluice-goal";

/// The entry point's own endpoint for goals reported by a front end.
pub const GOAL_PATH: &str = "/_sluice/goal";

/// At most this many goals per experiment (a user's conversions are a byte).
pub const MAX_GOALS: usize = 8;

/// The largest value one report may add.
pub const MAX_VALUE: f64 = 1e9;

/// Users are spread over this many locks, so that workers rarely meet.
const SHARDS: usize = 16;

/// The most events a recording tracker holds before the oldest go.
pub const MAX_EVENTS: usize = 200_000;

/// What a tracker on an agent's host counted, for the server's tracker.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GoalEvent {
    /// A user's exposure: their first request while the experiment runs.
    Exposed { user: u64, b: bool, share_b: f64 },
    /// A user reached goal number `goal`, worth `value` for a value goal.
    Reached {
        user: u64,
        goal: u8,
        value: Option<f64>,
    },
}

/// One goal of an experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub name: String,
    /// Reached by a matching request, if given.
    pub on: Option<RequestRule>,
    /// A value goal (revenue): each report adds to the user's total, and
    /// the arms compare totals per user. Otherwise a conversion: 1 or 0.
    pub value: bool,
}

/// `POST /checkout` answered with a status of a class (`2xx`), or any.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRule {
    pub method: http::Method,
    pub path: String,
    /// 2 for `2xx`; `None`: any status.
    pub status_class: Option<u16>,
}

impl RequestRule {
    fn matches(&self, method: &http::Method, path: &str) -> bool {
        *method == self.method && path == self.path
    }

    fn accepts(&self, status: http::StatusCode) -> bool {
        self.status_class
            .is_none_or(|class| status.as_u16() / 100 == class)
    }
}

/// One arm per goal, for A and for B.
#[derive(Clone, Debug, PartialEq)]
pub struct GoalArms {
    pub name: String,
    pub value: bool,
    pub a: Arm,
    pub b: Arm,
}

/// A user as the tracker keeps it: the variant of their exposure and the
/// goals they reached (a bit each). Their value totals, if any, are kept
/// apart: only buyers have one.
#[derive(Clone, Copy)]
struct User {
    b: bool,
    reached: u8,
    /// B's share at their exposure.
    share_b: f32,
}

/// A user as kept across a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub user: u64,
    pub b: bool,
    pub share_b: f64,
    /// A bit per goal reached.
    pub reached: u8,
    /// Value goals' totals, by goal index.
    pub totals: Vec<(u8, f64)>,
}

#[derive(Default)]
struct Shard {
    users: HashMap<u64, User>,
    /// Users exposed on A and on B.
    exposed: [u64; 2],
    /// B's share at each exposure, summed: the users B should have.
    expected_b: f64,
    /// Users changed since they were last taken to be kept.
    changed: HashSet<u64>,
    totals: HashMap<(u64, u8), f64>,
    arms: Vec<[Arm; 2]>,
}

impl Shard {
    /// A user's exposure, counted on their side of every goal.
    fn add(&mut self, user: u64, b: bool, share_b: f64) {
        self.expected_b += share_b;
        self.exposed[usize::from(b)] += 1;
        let share_b = share_b as f32;
        self.users.insert(
            user,
            User {
                b,
                reached: 0,
                share_b,
            },
        );
        for arms in &mut self.arms {
            arms[usize::from(b)].expose();
        }
    }
}

/// The goals of one experiment and its users.
pub struct GoalTracker {
    goals: Vec<Goal>,
    shards: Vec<Mutex<Shard>>,
    /// Tells this tracker from another experiment's: a host's tracker has
    /// the id of the server's it counts for.
    id: u64,
    /// On a host: what it counted, until taken ([`GoalTracker::take_events`]).
    events: Option<Mutex<std::collections::VecDeque<GoalEvent>>>,
    /// Told when a host's exposures are applied here: a goal reported for
    /// a user a host saw a moment ago waits for them.
    applied: tokio::sync::Notify,
}

impl std::fmt::Debug for GoalTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoalTracker")
            .field("goals", &self.goals)
            .finish_non_exhaustive()
    }
}

impl GoalTracker {
    pub fn new(goals: Vec<Goal>) -> Result<GoalTracker, String> {
        GoalTracker::made(goals, rand::random(), None)
    }

    /// A tracker on an agent's host, counting for the server's tracker
    /// `id`: it records what it counts as events.
    pub fn recording(goals: Vec<Goal>, id: u64) -> Result<GoalTracker, String> {
        GoalTracker::made(goals, id, Some(Mutex::default()))
    }

    fn made(
        goals: Vec<Goal>,
        id: u64,
        events: Option<Mutex<std::collections::VecDeque<GoalEvent>>>,
    ) -> Result<GoalTracker, String> {
        if goals.is_empty() || goals.len() > MAX_GOALS {
            return Err(format!("an experiment has 1 to {MAX_GOALS} goals"));
        }
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    arms: vec![[Arm::default(); 2]; goals.len()],
                    ..Shard::default()
                })
            })
            .collect();
        Ok(GoalTracker {
            goals,
            shards,
            id,
            events,
            applied: tokio::sync::Notify::new(),
        })
    }

    pub fn goals(&self) -> &[Goal] {
        &self.goals
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Keeps `event` for the server, when recording.
    fn record(&self, event: GoalEvent) {
        if let Some(events) = &self.events {
            let mut events = events.lock().unwrap();
            if events.len() >= MAX_EVENTS {
                events.pop_front();
            }
            events.push_back(event);
        }
    }

    /// What this tracker counted since the last call (on a host).
    pub fn take_events(&self) -> Vec<GoalEvent> {
        self.events
            .as_ref()
            .map(|events| events.lock().unwrap().drain(..).collect())
            .unwrap_or_default()
    }

    /// Counts what a host's tracker counted, as if seen here: an exposure
    /// of a user already exposed (on another host) and a conversion
    /// already reached count nothing again.
    pub fn apply(&self, event: &GoalEvent) {
        match *event {
            GoalEvent::Exposed { user, b, share_b } => {
                let variant = if b { Variant::B } else { Variant::A };
                let share_b = if share_b.is_finite() {
                    share_b.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                self.expose(user, variant, share_b);
                self.applied.notify_waiters();
            }
            GoalEvent::Reached { user, goal, value } => {
                self.reach(user, usize::from(goal), value);
            }
        }
    }

    /// Resolves at the next exposure a host's events bring
    /// ([`GoalTracker::apply`]); made before looking, it misses none.
    pub fn applied(&self) -> tokio::sync::futures::Notified<'_> {
        self.applied.notified()
    }

    fn shard(&self, user: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits are the hash's best mixed.
        self.shards[(user as usize) % SHARDS].lock().unwrap()
    }

    /// A request of `user` routed to `variant` while B's share was
    /// `share_b`: their exposure, the first time. A user keeps the variant
    /// of their exposure (a ramp may move them to B later; their goals
    /// still count where they started).
    pub fn expose(&self, user: u64, variant: Variant, share_b: f64) {
        let mut shard = self.shard(user);
        if shard.users.contains_key(&user) {
            return;
        }
        let b = variant == Variant::B;
        shard.add(user, b, share_b);
        shard.changed.insert(user);
        drop(shard);
        self.record(GoalEvent::Exposed { user, b, share_b });
    }

    /// Users kept before a restart, counted again as they were.
    pub fn restore(&self, users: impl IntoIterator<Item = UserRecord>) {
        for record in users {
            let mut shard = self.shard(record.user);
            if shard.users.contains_key(&record.user) {
                continue;
            }
            shard.add(record.user, record.b, record.share_b);
            let side = usize::from(record.b);
            for (index, goal) in self.goals.iter().enumerate() {
                if record.reached & (1 << index) == 0 || goal.value {
                    continue;
                }
                shard.arms[index][side].update(0.0, 1.0);
            }
            for (index, total) in record.totals {
                let Some(arms) = shard.arms.get_mut(usize::from(index)) else {
                    continue;
                };
                arms[side].update(0.0, total);
                shard.totals.insert((record.user, index), total);
            }
            if let Some(user) = shard.users.get_mut(&record.user) {
                user.reached = record.reached;
            }
        }
    }

    /// The users changed since the last call, to be kept.
    pub fn take_changed(&self) -> Vec<UserRecord> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap();
            let changed = std::mem::take(&mut shard.changed);
            for user in changed {
                let Some(state) = shard.users.get(&user).copied() else {
                    continue;
                };
                let totals = (0..self.goals.len() as u8)
                    .filter_map(|i| shard.totals.get(&(user, i)).map(|t| (i, *t)))
                    .collect();
                out.push(UserRecord {
                    user,
                    b: state.b,
                    share_b: f64::from(state.share_b),
                    reached: state.reached,
                    totals,
                });
            }
        }
        out
    }

    /// `user` reached goal `index`, worth `value` for a value goal (1 if
    /// not given). Ignored for a user not exposed (a goal counts only after
    /// the exposure) and for a conversion already counted. Whether the user
    /// was one the experiment counts.
    pub fn reach(&self, user: u64, index: usize, value: Option<f64>) -> bool {
        let Some(goal) = self.goals.get(index) else {
            return false;
        };
        let mut shard = self.shard(user);
        let Some(mut state) = shard.users.get(&user).copied() else {
            return false;
        };
        let bit = 1u8 << index;
        let side = usize::from(state.b);
        if goal.value {
            let added = value.unwrap_or(1.0);
            if !(0.0..=MAX_VALUE).contains(&added) {
                return false;
            }
            let total = shard.totals.entry((user, index as u8)).or_insert(0.0);
            let before = *total;
            *total += added;
            let after = *total;
            shard.arms[index][side].update(before, after);
        } else if state.reached & bit == 0 {
            shard.arms[index][side].update(0.0, 1.0);
        }
        state.reached |= bit;
        shard.users.insert(user, state);
        shard.changed.insert(user);
        drop(shard);
        self.record(GoalEvent::Reached {
            user,
            goal: index as u8,
            value,
        });
        true
    }

    /// The goal called `name`, if the experiment has one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.goals.iter().position(|g| g.name == name)
    }

    /// The goals a request of `method` on `path` reaches once answered.
    pub fn requested(&self, method: &http::Method, path: &str) -> Vec<usize> {
        self.goals
            .iter()
            .enumerate()
            .filter(|(_, g)| g.on.as_ref().is_some_and(|r| r.matches(method, path)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether goal `index`'s request rule accepts an answer of `status`.
    pub fn accepts(&self, index: usize, status: http::StatusCode) -> bool {
        self.goals[index]
            .on
            .as_ref()
            .is_some_and(|rule| rule.accepts(status))
    }

    /// Each goal's arms, summed over the shards.
    pub fn arms(&self) -> Vec<GoalArms> {
        let mut sums = vec![[Arm::default(); 2]; self.goals.len()];
        for shard in &self.shards {
            let shard = shard.lock().unwrap();
            for (sum, arms) in sums.iter_mut().zip(&shard.arms) {
                sum[0].merge(&arms[0]);
                sum[1].merge(&arms[1]);
            }
        }
        self.goals
            .iter()
            .zip(sums)
            .map(|(goal, [a, b])| GoalArms {
                name: goal.name.clone(),
                value: goal.value,
                a,
                b,
            })
            .collect()
    }

    /// Users exposed so far.
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().users.len())
            .sum()
    }

    /// Users exposed on A and on B, and how many B's shares at their
    /// exposures expect on B.
    pub fn split(&self) -> (u64, u64, f64) {
        let (mut a, mut b, mut expected_b) = (0, 0, 0.0);
        for shard in &self.shards {
            let shard = shard.lock().unwrap();
            a += shard.exposed[0];
            b += shard.exposed[1];
            expected_b += shard.expected_b;
        }
        (a, b, expected_b)
    }
}

/// `purchase; value=19.99` → the goal's name and value. Names are what
/// `sluice.yaml` allows (letters, digits, `-`, `_`, `.`, at most 64).
pub fn parse_report(text: &str) -> Option<(&str, Option<f64>)> {
    let mut parts = text.split(';').map(str::trim);
    let name = parts.next().filter(|n| valid_name(n))?;
    let mut value = None;
    for part in parts {
        let (key, raw) = part.split_once('=')?;
        if key.trim() != "value" {
            return None;
        }
        let number: f64 = raw.trim().parse().ok()?;
        if !number.is_finite() || !(0.0..=MAX_VALUE).contains(&number) {
            return None;
        }
        value = Some(number);
    }
    Some((name, value))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> GoalTracker {
        GoalTracker::new(vec![
            Goal {
                name: "checkout".into(),
                on: Some(RequestRule {
                    method: http::Method::POST,
                    path: "/checkout".into(),
                    status_class: Some(2),
                }),
                value: false,
            },
            Goal {
                name: "purchase".into(),
                on: None,
                value: true,
            },
        ])
        .unwrap()
    }

    #[test]
    fn an_exposure_a_host_brings_wakes_who_waits_for_it() {
        use std::future::Future;
        let server = tracker();
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut waiting = std::pin::pin!(server.applied());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        // What this server's own entry point sees is no host's news.
        server.expose(3, Variant::A, 0.1);
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        server.apply(&GoalEvent::Exposed {
            user: 4,
            b: true,
            share_b: 0.1,
        });
        assert!(waiting.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn what_hosts_count_adds_up_at_the_server_once() {
        let server = tracker();
        let goals = || server.goals().to_vec();
        let (one, two) = (
            GoalTracker::recording(goals(), server.id()).unwrap(),
            GoalTracker::recording(goals(), server.id()).unwrap(),
        );
        assert_eq!(one.id(), server.id());
        // A user lands on host one as B, checks out and buys on host two.
        one.expose(7, Variant::B, 0.1);
        two.expose(7, Variant::B, 0.2);
        two.reach(7, 0, None);
        two.reach(7, 0, None);
        two.reach(7, 1, Some(10.0));
        one.reach(7, 1, Some(2.5));
        // Another lands on host two as A and does nothing more.
        two.expose(8, Variant::A, 0.2);
        for event in one.take_events().iter().chain(&two.take_events()) {
            server.apply(event);
        }
        assert!(one.take_events().is_empty(), "taken once");
        let arms = server.arms();
        assert_eq!((arms[0].a.users, arms[0].b.users), (1, 1));
        assert_eq!(arms[0].b.sum, 1.0, "one conversion, once");
        assert_eq!(arms[1].b.sum, 12.5, "values add up over the hosts");
        let (a, b, expected_b) = server.split();
        assert_eq!((a, b), (1, 1), "exposed once each");
        assert!(
            (expected_b - 0.3).abs() < 1e-9,
            "at their first share: {expected_b}"
        );
        server.apply(&GoalEvent::Exposed {
            user: 9,
            b: true,
            share_b: f64::NAN,
        });
        assert!(
            (server.split().2 - 0.3).abs() < 1e-9,
            "a share from outside is checked"
        );
        assert!(
            server.take_events().is_empty(),
            "the server's tracker records nothing"
        );
    }

    #[test]
    fn a_user_counts_once_from_their_exposure_in_its_variant() {
        let goals = tracker();
        goals.reach(1, 0, None);
        assert_eq!(goals.arms()[0].a.outcomes, 0, "not exposed: not counted");
        goals.expose(1, Variant::A, 0.5);
        goals.expose(1, Variant::B, 0.5);
        goals.expose(2, Variant::B, 0.5);
        assert_eq!(goals.split(), (1, 1, 1.0));
        goals.reach(1, 0, None);
        goals.reach(1, 0, None);
        goals.reach(2, 1, Some(10.0));
        goals.reach(2, 1, Some(5.5));
        let arms = goals.arms();
        assert_eq!((arms[0].a.users, arms[0].b.users), (1, 1));
        assert_eq!(
            (arms[0].a.sum, arms[0].b.sum),
            (1.0, 0.0),
            "one conversion, once"
        );
        assert_eq!(arms[1].b.sum, 15.5, "a value goal adds up per user");
        assert_eq!(arms[1].b.sum_sq, 15.5 * 15.5);
        assert_eq!(arms[1].b.outcomes, 1);
        assert_eq!(goals.users(), 2);
    }

    #[test]
    fn users_kept_and_restored_count_as_they_did() {
        let goals = tracker();
        goals.expose(1, Variant::A, 0.5);
        goals.expose(2, Variant::B, 0.5);
        goals.reach(1, 0, None);
        goals.reach(2, 1, Some(19.5));
        let kept = goals.take_changed();
        assert_eq!(kept.len(), 2);
        assert!(goals.take_changed().is_empty(), "taken once");
        goals.reach(2, 1, Some(0.5));
        assert_eq!(goals.take_changed()[0].totals, vec![(1, 20.0)]);
        let mut all = kept;
        all.retain(|u| u.user == 1);
        all.push(UserRecord {
            user: 2,
            b: true,
            share_b: 0.5,
            reached: 0b10,
            totals: vec![(1, 20.0)],
        });
        let again = tracker();
        again.restore(all);
        assert_eq!(again.arms(), goals.arms());
        assert_eq!(again.split(), goals.split());
        assert!(
            again.take_changed().is_empty(),
            "restored users are kept already"
        );
        // A conversion already counted is not counted twice after a restore.
        again.reach(1, 0, None);
        assert_eq!(again.arms()[0].a.sum, 1.0);
    }

    #[test]
    fn request_rules_match_method_path_and_status_class() {
        let goals = tracker();
        assert_eq!(goals.requested(&http::Method::POST, "/checkout"), vec![0]);
        assert!(goals.requested(&http::Method::GET, "/checkout").is_empty());
        assert!(
            goals
                .requested(&http::Method::POST, "/checkout/x")
                .is_empty()
        );
        assert!(goals.accepts(0, http::StatusCode::CREATED));
        assert!(!goals.accepts(0, http::StatusCode::BAD_REQUEST));
    }

    #[test]
    fn reports_are_parsed_and_hostile_ones_refused() {
        let cases = [
            ("purchase; value=19.99", Some(("purchase", Some(19.99)))),
            ("signup", Some(("signup", None))),
            (" checkout ;value= 3 ", Some(("checkout", Some(3.0)))),
            ("purchase; value=-1", None),
            ("purchase; value=NaN", None),
            ("purchase; value=1e12", None),
            ("purchase; price=3", None),
            ("", None),
            ("a b", None),
            ("<script>", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_report(text), expected, "{text:?}");
        }
    }

    #[test]
    fn goals_are_bounded() {
        assert!(GoalTracker::new(vec![]).is_err());
        let many = (0..9)
            .map(|i| Goal {
                name: format!("g{i}"),
                on: None,
                value: false,
            })
            .collect();
        assert!(GoalTracker::new(many).is_err());
    }
}
