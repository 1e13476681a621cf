//! Goals simulated: users arrive every second on both arms, some convert
//! (or spend), and the test is looked at after every second, as the
//! experiment engine does. The figures are printed (`--nocapture`) and
//! recorded in docs/analysis.md; the assertions are the targets.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal};
use sluice_analysis::goals::{Arm, Verdict, lift, user_ratio_mismatch, verdict};

const ALPHA: f64 = 0.05;
const MIN_EFFECT: f64 = 0.02;

fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        0
    } else {
        Binomial::new(n, p).unwrap().sample(rng)
    }
}

/// How each arm's users behave: the share who convert, and what a
/// converting user spends (`None`: a conversion goal, worth 1).
#[derive(Clone, Copy)]
struct Users {
    converts: f64,
    spends: Option<LogNormal<f64>>,
    /// Spending scaled by this (B's 10% more per buyer).
    scale: f64,
}

impl Users {
    fn conversion(p: f64) -> Users {
        Users {
            converts: p,
            spends: None,
            scale: 1.0,
        }
    }

    /// Adds `n` new users to `arm`.
    fn arrive(&self, rng: &mut StdRng, arm: &mut Arm, n: u64) {
        let converted = binomial(rng, n, self.converts);
        arm.users += n;
        for _ in 0..converted {
            let value = self.spends.map_or(1.0, |d| d.sample(rng) * self.scale);
            arm.update(0.0, value);
        }
    }
}

/// One experiment: `per_second` users on each arm each second until the
/// verdict is not `Undecided` or each arm has `max_users`; the verdict and
/// the users per arm it took.
fn experiment(
    rng: &mut StdRng,
    a: Users,
    b: Users,
    per_second: u64,
    max_users: u64,
) -> (Verdict, u64) {
    let (mut arm_a, mut arm_b) = (Arm::default(), Arm::default());
    while arm_a.users < max_users {
        a.arrive(rng, &mut arm_a, per_second);
        b.arrive(rng, &mut arm_b, per_second);
        if let Some(lift) = lift(&arm_a, &arm_b, ALPHA) {
            match verdict(&lift, MIN_EFFECT) {
                Verdict::Undecided => {}
                // A test stops at "no difference" too; it declared nothing.
                decided => return (decided, arm_a.users),
            }
        }
    }
    (Verdict::Undecided, arm_a.users)
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

#[test]
fn aa_conversion_tests_rarely_declare_a_winner() {
    let mut rng = StdRng::seed_from_u64(11);
    let runs = 2000;
    let same = Users::conversion(0.05);
    let declared = (0..runs)
        .filter(|_| {
            let (verdict, _) = experiment(&mut rng, same, same, 100, 60_000);
            matches!(verdict, Verdict::Better | Verdict::Worse)
        })
        .count();
    let rate = declared as f64 / runs as f64;
    println!(
        "A/A conversion 5%, 60,000 users an arm, {runs} experiments: better or worse declared in {:.2}%",
        rate * 100.0
    );
    assert!(rate <= 0.05, "declared in {rate}");
}

#[test]
fn a_ten_percent_better_conversion_is_found_within_60000_users() {
    let mut rng = StdRng::seed_from_u64(12);
    let runs = 2000;
    let (a, b) = (Users::conversion(0.05), Users::conversion(0.055));
    let mut found = Vec::new();
    let mut wrong = 0;
    for _ in 0..runs {
        match experiment(&mut rng, a, b, 100, 60_000) {
            (Verdict::Better, users) => found.push(users),
            (Verdict::Worse, _) => wrong += 1,
            _ => {}
        }
    }
    let power = found.len() as f64 / runs as f64;
    println!(
        "conversion 5.0% vs 5.5%: B better in {:.1}% within 60,000 users an arm (median {} users), worse in {wrong}",
        power * 100.0,
        median(found.clone())
    );
    assert!(power >= 0.8, "power {power}");
    // The wrong sign is a false alarm too, bounded by the level.
    assert!(
        wrong as f64 / runs as f64 <= ALPHA / 2.0,
        "worse in {wrong}"
    );
}

#[test]
fn revenue_per_user_log_normal_power_and_false_alarms() {
    let mut rng = StdRng::seed_from_u64(13);
    let runs = 2000;
    // 5% of users buy; a purchase is log-normal (median 20, σ 1: mean 33,
    // a long right tail); B's buyers spend 10% more.
    let spend = LogNormal::new(20f64.ln(), 1.0).unwrap();
    let a = Users {
        converts: 0.05,
        spends: Some(spend),
        scale: 1.0,
    };
    let b = Users { scale: 1.1, ..a };
    let max = 200_000;
    let mut found = Vec::new();
    for _ in 0..runs {
        if let (Verdict::Better, users) = experiment(&mut rng, a, b, 500, max) {
            found.push(users);
        }
    }
    let power = found.len() as f64 / runs as f64;
    let mut false_alarms = 0;
    for _ in 0..runs {
        if let (Verdict::Better | Verdict::Worse, _) = experiment(&mut rng, a, a, 500, max) {
            false_alarms += 1;
        }
    }
    let false_rate = false_alarms as f64 / runs as f64;
    println!(
        "revenue per user +10% (5% buy, log-normal σ 1): B better in {:.1}% within {max} users an arm (median {} users); A/A declared in {:.2}%",
        power * 100.0,
        median(found),
        false_rate * 100.0
    );
    assert!(false_rate <= 0.05, "A/A declared in {false_rate}");
    assert!(power >= 0.5, "power {power}");
}

#[test]
fn losing_two_percent_of_b_s_users_is_a_sample_ratio_mismatch() {
    let mut rng = StdRng::seed_from_u64(14);
    let runs = 2000;
    let max_users = 600_000;
    let run = |rng: &mut StdRng, kept: f64| {
        let (mut a, mut b) = (0u64, 0u64);
        while a + b < max_users {
            // 200 users a second at a 50% split; B keeps `kept` of its own.
            let to_b = binomial(rng, 200, 0.5);
            a += 200 - to_b;
            b += binomial(rng, to_b, kept);
            if user_ratio_mismatch(a, b, 0.5, 0.001) {
                return Some(a + b);
            }
        }
        None
    };
    let caught: Vec<u64> = (0..runs).filter_map(|_| run(&mut rng, 0.98)).collect();
    let false_alarms = (0..runs).filter(|_| run(&mut rng, 1.0).is_some()).count();
    let power = caught.len() as f64 / runs as f64;
    println!(
        "SRM, 2% of B's users lost at 50%: caught in {:.1}% within {max_users} users (median {}); a fair split flagged in {:.2}%",
        power * 100.0,
        median(caught),
        false_alarms as f64 / runs as f64 * 100.0
    );
    assert!(power >= 0.8, "power {power}");
    assert!(false_alarms as f64 / runs as f64 <= 0.001 * 5.0);
}
