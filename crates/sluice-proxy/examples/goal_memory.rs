//! Memory per user of goal tracking: USERS (default 1,000,000) users exposed
//! to an experiment with three goals, a tenth of them converting and a
//! twentieth spending; the process's resident memory before, at the peak
//! (every user changed since the last write to the store) and after the
//! changes were taken, per user. Run by bench/goals.sh.

use sluice_proxy::Variant;
use sluice_proxy::goals::{Goal, GoalTracker, user_id};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let users: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let goal = |name: &str, value: bool| Goal {
        name: name.into(),
        on: None,
        value,
    };
    let tracker = GoalTracker::new(vec![
        goal("checkout", false),
        goal("signup", false),
        goal("revenue", true),
    ])
    .expect("three goals");
    let before = resident_kib();
    for i in 0..users {
        let user = user_id(&format!("{i:016x}"));
        let variant = if i % 2 == 0 { Variant::A } else { Variant::B };
        tracker.expose(user, variant, 0.5);
        if i % 10 == 0 {
            tracker.reach(user, 0, None);
        }
        if i % 20 == 0 {
            tracker.reach(user, 2, Some(19.99));
        }
    }
    let peak = resident_kib();
    let taken = tracker.take_changed().len();
    let after = resident_kib();
    let per_user = |kib: u64| (kib.saturating_sub(before) * 1024) as f64 / users as f64;
    println!(
        "{users} users ({taken} to keep): {:.0} bytes a user with every user waiting to be kept, {:.0} bytes a user after ({} MiB resident)",
        per_user(peak),
        per_user(after),
        after / 1024
    );
    assert_eq!(tracker.users() as u64, users);
}
