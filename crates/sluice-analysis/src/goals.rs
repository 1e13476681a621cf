//! Is B better for users? Per goal and variant, the users exposed and each
//! one's outcome (1 or 0 for a conversion, their total for a value goal);
//! an always-valid test of B's relative lift over A with its confidence
//! sequence; the verdict of a test (better, worse, no difference larger
//! than `min_effect`, not yet); and sample-ratio mismatch counted in users.
//!
//! The test is a normal-mixture sequential probability ratio test (mSPRT,
//! Johari et al., "Always Valid Inference", 2017) on the lift's estimate,
//! whose variance comes from each arm's per-user variance by the delta
//! method: valid at every look as the normal approximation is, that is
//! once each arm has a few hundred users (see docs/analysis.md).

use serde::{Deserialize, Serialize};

/// The mixing scale of the mSPRT on relative lifts: it is most powerful
/// against lifts of about this size (10%).
pub const LIFT_TAU: f64 = 0.10;

/// The mixing scale of the user-level SRM test, on B's share of users.
pub const SHARE_TAU: f64 = 0.005;

/// Users each arm needs before its goal is tested at all, and users with
/// an outcome (who converted, or spent): the normal approximation the test
/// rests on needs them, and without them early looks declare too often.
pub const MIN_USERS: u64 = 1000;
pub const MIN_OUTCOMES: u64 = 50;

/// One variant's users for one goal: how many, and the sum and sum of
/// squares of their outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub users: u64,
    /// Users whose outcome is not 0.
    pub outcomes: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Arm {
    /// A user's first request during the experiment: outcome 0 so far.
    pub fn expose(&mut self) {
        self.users += 1;
    }

    /// A user's outcome went from `before` to `after` (1 on converting; a
    /// value goal's running total).
    pub fn update(&mut self, before: f64, after: f64) {
        match (before == 0.0, after == 0.0) {
            (true, false) => self.outcomes += 1,
            (false, true) => self.outcomes = self.outcomes.saturating_sub(1),
            _ => {}
        }
        self.sum += after - before;
        self.sum_sq += after * after - before * before;
    }

    /// Adds another arm's users (a shard, a host).
    pub fn merge(&mut self, other: &Arm) {
        self.users += other.users;
        self.outcomes += other.outcomes;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.users > 0).then(|| self.sum / self.users as f64)
    }

    /// The per-user outcome's variance (unbiased).
    pub fn variance(&self) -> Option<f64> {
        let n = self.users as f64;
        (self.users > 1).then(|| ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// B's lift over A on one goal, relative (0.1: 10% more conversions or value
/// per user), with its always-valid confidence interval at the level asked.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Lift {
    pub a_mean: f64,
    pub b_mean: f64,
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// The always-valid p-value of "no lift" (1 / the mixture likelihood ratio).
    pub p_value: f64,
}

/// What a test concludes on its primary goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The lift's interval lies above 0.
    Better,
    /// The lift's interval lies below 0.
    Worse,
    /// The interval lies within ±`min_effect`: no difference worth having.
    NoDifference,
    /// Not yet.
    Undecided,
}

/// B's lift on a goal from both arms, at level `alpha`; `None` until each
/// arm has [`MIN_USERS`] users and [`MIN_OUTCOMES`] outcomes (so A's mean,
/// which the lift is relative to, is not zero).
pub fn lift(a: &Arm, b: &Arm, alpha: f64) -> Option<Lift> {
    let enough = |arm: &Arm| arm.users >= MIN_USERS && arm.outcomes >= MIN_OUTCOMES;
    if !enough(a) || !enough(b) {
        return None;
    }
    let (a_mean, b_mean) = (a.mean()?, b.mean()?);
    if a_mean <= 0.0 {
        return None;
    }
    let (var_a, var_b) = (
        a.variance()? / a.users as f64,
        b.variance()? / b.users as f64,
    );
    // Delta method for b/a - 1.
    let v = var_b / (a_mean * a_mean) + (b_mean * b_mean) * var_a / a_mean.powi(4);
    let estimate = b_mean / a_mean - 1.0;
    if v <= 0.0 {
        // No variance at all (every user alike): the estimate is exact.
        return Some(Lift {
            a_mean,
            b_mean,
            estimate,
            lower: estimate,
            upper: estimate,
            p_value: if estimate == 0.0 { 1.0 } else { 0.0 },
        });
    }
    let half = msprt_half_width(v, LIFT_TAU, alpha);
    Some(Lift {
        a_mean,
        b_mean,
        estimate,
        lower: estimate - half,
        upper: estimate + half,
        p_value: (-msprt_log_ratio(estimate, v, LIFT_TAU)).exp().min(1.0),
    })
}

/// The verdict on a lift: an interval above or below zero decides, as does
/// one within ±`min_effect` (no difference that matters).
pub fn verdict(lift: &Lift, min_effect: f64) -> Verdict {
    if lift.lower > 0.0 {
        Verdict::Better
    } else if lift.upper < 0.0 {
        Verdict::Worse
    } else if lift.lower > -min_effect && lift.upper < min_effect {
        Verdict::NoDifference
    } else {
        Verdict::Undecided
    }
}

/// The level each secondary goal's interval is given at: `alpha` shared
/// among them (Bonferroni), so that all of them hold together.
pub fn secondary_alpha(alpha: f64, secondary_goals: usize) -> f64 {
    alpha / secondary_goals.max(1) as f64
}

/// Whether B's share of users strays from `expected_share` beyond chance,
/// at level `alpha`, looked at as often as wanted: users lost or doubled on
/// one side (a redirect, a crash, a bot) break the comparison.
pub fn user_ratio_mismatch(a_users: u64, b_users: u64, expected_share: f64, alpha: f64) -> bool {
    let n = (a_users + b_users) as f64;
    if n < 1.0 || expected_share <= 0.0 || expected_share >= 1.0 {
        return false;
    }
    let share = b_users as f64 / n;
    let v = expected_share * (1.0 - expected_share) / n;
    msprt_log_ratio(share - expected_share, v, SHARE_TAU) >= (1.0 / alpha).ln()
}

/// `ln Λ` of the normal-mixture SPRT for an estimate `delta` of variance `v`
/// and mixing scale `tau`: `Λ = sqrt(v/(v+τ²)) · exp(δ²τ² / (2v(v+τ²)))`.
fn msprt_log_ratio(delta: f64, v: f64, tau: f64) -> f64 {
    let t2 = tau * tau;
    0.5 * (v / (v + t2)).ln() + delta * delta * t2 / (2.0 * v * (v + t2))
}

/// The half-width of the confidence sequence: the values `δ0` for which
/// `Λ(δ - δ0) < 1/α`.
fn msprt_half_width(v: f64, tau: f64, alpha: f64) -> f64 {
    let t2 = tau * tau;
    let bound = (1.0 / alpha).ln() + 0.5 * ((v + t2) / v).ln();
    (2.0 * v * (v + t2) / t2 * bound).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(users: u64, converted: u64) -> Arm {
        let mut arm = Arm::default();
        for i in 0..users {
            arm.expose();
            if i < converted {
                arm.update(0.0, 1.0);
            }
        }
        arm
    }

    #[test]
    fn an_arm_keeps_the_mean_and_variance_of_its_users() {
        let mut arm = Arm::default();
        for value in [0.0, 2.0, 4.0] {
            arm.expose();
            arm.update(0.0, value);
        }
        assert_eq!(arm.mean(), Some(2.0));
        assert_eq!(arm.variance(), Some(4.0));
        // A user's total grows: only the difference is added.
        arm.update(4.0, 7.0);
        assert_eq!(arm.mean(), Some(3.0));
        assert_eq!(arm.variance(), Some(13.0));
    }

    #[test]
    fn verdicts_from_lifts() {
        let cases = [
            ("clearly better", 10_000, 500, 10_000, 700, Verdict::Better),
            ("clearly worse", 10_000, 700, 10_000, 500, Verdict::Worse),
            (
                "equal and precise",
                2_000_000,
                100_000,
                2_000_000,
                100_100,
                Verdict::NoDifference,
            ),
            ("too few to say", 2_000, 100, 2_000, 110, Verdict::Undecided),
        ];
        for (case, a_users, a_conv, b_users, b_conv, expected) in cases {
            let lift = lift(&arm(a_users, a_conv), &arm(b_users, b_conv), 0.05).unwrap();
            assert_eq!(verdict(&lift, 0.02), expected, "{case}: {lift:?}");
        }
    }

    #[test]
    fn no_lift_before_each_arm_has_its_users() {
        assert!(lift(&arm(500, 50), &arm(10_000, 500), 0.05).is_none());
        assert!(lift(&arm(10_000, 40), &arm(10_000, 500), 0.05).is_none());
    }

    #[test]
    fn the_interval_widens_with_fewer_users_and_a_stricter_level() {
        let wide = lift(&arm(2_000, 100), &arm(2_000, 120), 0.05).unwrap();
        let narrow = lift(&arm(100_000, 5_000), &arm(100_000, 6_000), 0.05).unwrap();
        assert!(wide.upper - wide.lower > narrow.upper - narrow.lower);
        let strict = lift(&arm(100_000, 5_000), &arm(100_000, 6_000), 0.01).unwrap();
        assert!(strict.upper - strict.lower > narrow.upper - narrow.lower);
        assert!((narrow.estimate - 0.2).abs() < 1e-9);
        assert!(narrow.p_value < 1e-6);
        assert_eq!(secondary_alpha(0.05, 4), 0.0125);
    }

    #[test]
    fn a_user_ratio_mismatch_is_caught_and_a_fair_split_is_not() {
        assert!(!user_ratio_mismatch(50_000, 50_100, 0.5, 0.001));
        assert!(user_ratio_mismatch(50_000, 45_000, 0.5, 0.001));
        assert!(!user_ratio_mismatch(0, 0, 0.5, 0.001));
    }
}
