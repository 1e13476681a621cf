//! An experiment's goals as its decisions see them: each goal's arms from
//! the entry point, B's lift with its always-valid interval (the primary
//! goal at `alpha`, the others at `alpha` shared among them), and the pure
//! decision of a test holding at its split.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_analysis::goals::{
    Arm, Lift, Verdict, lift, secondary_alpha, user_ratio_mismatch, verdict,
};
use sluice_proxy::Route;
use sluice_proxy::goals::UserRecord;
use sluice_spec::AbTest;
use sluice_store::ExperimentUser;

/// The level of the user-level sample-ratio check.
const SRM_ALPHA: f64 = 0.001;

/// The goals now: as JSON for decisions and reports, and the primary's.
pub(crate) struct GoalsNow {
    pub json: Value,
    pub primary: Option<Primary>,
    pub users: Option<UserSplit>,
}

/// Users exposed on each side, and how many B's shares expected on B.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserSplit {
    pub a: u64,
    pub b: u64,
    pub expected_b: f64,
}

/// Why the users' split breaks the comparison, if it does: users lost (or
/// made up) on one side beyond chance, however often it is looked at.
pub(crate) fn broken(users: &UserSplit) -> Option<String> {
    let total = users.a + users.b;
    if total == 0 {
        return None;
    }
    let share = users.expected_b / total as f64;
    user_ratio_mismatch(users.a, users.b, share, SRM_ALPHA).then(|| {
        format!(
            "B has {} users and A {}, where B's shares expect {:.0} on B: users go missing on one side, so the comparison is broken",
            users.b, users.a, users.expected_b
        )
    })
}

/// The primary goal's arms and lift.
pub(crate) struct Primary {
    pub name: String,
    pub value: bool,
    pub a: Arm,
    pub b: Arm,
    pub lift: Option<Lift>,
}

/// Each goal the entry point counts for the experiment on `route`.
pub(crate) fn report(route: &Route, alpha: f64) -> GoalsNow {
    let Some(tracker) = route.goals() else {
        return GoalsNow {
            json: json!([]),
            primary: None,
            users: None,
        };
    };
    let all = tracker.arms();
    let secondary = secondary_alpha(alpha, all.len().saturating_sub(1));
    let mut primary = None;
    let json: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(i, goal)| {
            let level = if i == 0 { alpha } else { secondary };
            let lift = lift(&goal.a, &goal.b, level);
            if i == 0 {
                primary = Some(Primary {
                    name: goal.name.clone(),
                    value: goal.value,
                    a: goal.a,
                    b: goal.b,
                    lift,
                });
            }
            let side = |arm: &Arm| {
                json!({ "users": arm.users, "reached": arm.outcomes, "mean": arm.mean() })
            };
            json!({
                "name": goal.name,
                "primary": i == 0,
                "value": goal.value,
                "alpha": level,
                "a": side(&goal.a),
                "b": side(&goal.b),
                "lift": lift,
                "verdict": lift.map(|l| verdict(&l, 0.0)),
            })
        })
        .collect();
    let (a, b, expected_b) = tracker.split();
    GoalsNow {
        json: Value::Array(json),
        primary,
        users: Some(UserSplit { a, b, expected_b }),
    }
}

/// A user as the store keeps it.
pub(crate) fn to_row(user: UserRecord) -> ExperimentUser {
    ExperimentUser {
        user_id: user.user as i64,
        b: i64::from(user.b),
        share_b: user.share_b,
        reached: i64::from(user.reached),
        totals: serde_json::to_string(&user.totals).unwrap_or_else(|_| "[]".into()),
    }
}

/// A user as the store kept it.
pub(crate) fn from_row(row: ExperimentUser) -> UserRecord {
    UserRecord {
        user: row.user_id as u64,
        b: row.b != 0,
        share_b: row.share_b,
        reached: row.reached as u8,
        totals: serde_json::from_str(&row.totals).unwrap_or_default(),
    }
}

/// What a test holding at its split does next.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TestStep {
    /// B is better on the primary goal.
    Promote(String),
    /// A stays: B worse, no difference worth having, or out of time.
    Conclude(String),
    Wait,
}

/// The decision of a test at its split, from its primary goal.
pub(crate) fn test_step(primary: &Primary, test: &AbTest, held_for: Duration) -> TestStep {
    let (a, b) = (primary.a.users, primary.b.users);
    let what = if primary.value {
        "value per user"
    } else {
        "conversion"
    };
    let said = |l: &Lift| {
        format!(
            "{what} on `{}`: B {} against A {} ({} users against {}), lift {:+.1}% [{:+.1}%, {:+.1}%]",
            primary.name,
            shown(l.b_mean, primary.value),
            shown(l.a_mean, primary.value),
            b,
            a,
            100.0 * l.estimate,
            100.0 * l.lower,
            100.0 * l.upper
        )
    };
    match primary
        .lift
        .as_ref()
        .map(|l| (l, verdict(l, test.min_effect)))
    {
        Some((l, Verdict::Better)) => TestStep::Promote(format!("B is better: {}", said(l))),
        Some((l, Verdict::Worse)) => TestStep::Conclude(format!("B is worse: {}", said(l))),
        Some((l, Verdict::NoDifference)) => TestStep::Conclude(format!(
            "no difference larger than {:.1}%: {}",
            100.0 * test.min_effect,
            said(l)
        )),
        _ if held_for >= test.max_duration => TestStep::Conclude(format!(
            "inconclusive after {}: {}",
            sluice_spec::format_duration(test.max_duration),
            primary.lift.as_ref().map_or_else(
                || format!("too few users on `{}` to say", primary.name),
                said
            )
        )),
        _ => TestStep::Wait,
    }
}

fn shown(mean: f64, value: bool) -> String {
    if value {
        format!("{mean:.2}")
    } else {
        format!("{:.2}%", 100.0 * mean)
    }
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

    fn primary(a: Arm, b: Arm) -> Primary {
        Primary {
            name: "checkout".into(),
            value: false,
            a,
            b,
            lift: lift(&a, &b, 0.05),
        }
    }

    #[test]
    fn a_test_at_its_split_decides_on_its_primary_goal() {
        let test = AbTest {
            split: 50,
            min_effect: 0.02,
            max_duration: Duration::from_secs(3600),
            manual: false,
        };
        let hour = Duration::from_secs(3600);
        let cases = [
            (
                "better",
                arm(20_000, 1_000),
                arm(20_000, 1_400),
                Duration::ZERO,
                "Promote",
            ),
            (
                "worse",
                arm(20_000, 1_400),
                arm(20_000, 1_000),
                Duration::ZERO,
                "Conclude",
            ),
            (
                "equal, precise",
                arm(3_000_000, 150_000),
                arm(3_000_000, 150_000),
                Duration::ZERO,
                "Conclude",
            ),
            (
                "too few yet",
                arm(2_000, 100),
                arm(2_000, 104),
                Duration::ZERO,
                "Wait",
            ),
            (
                "too few, out of time",
                arm(2_000, 100),
                arm(2_000, 104),
                hour,
                "Conclude",
            ),
        ];
        for (case, a, b, held, expected) in cases {
            let step = test_step(&primary(a, b), &test, held);
            let name = match &step {
                TestStep::Promote(_) => "Promote",
                TestStep::Conclude(_) => "Conclude",
                TestStep::Wait => "Wait",
            };
            assert_eq!(name, expected, "{case}: {step:?}");
        }
    }

    #[test]
    fn a_user_goes_to_the_store_and_back_unchanged() {
        let user = UserRecord {
            user: u64::MAX - 7,
            b: true,
            share_b: 0.25,
            reached: 0b101,
            totals: vec![(2, 19.5)],
        };
        assert_eq!(from_row(to_row(user.clone())), user);
    }

    #[test]
    fn users_missing_on_one_side_break_the_comparison() {
        let fair = UserSplit {
            a: 50_000,
            b: 50_100,
            expected_b: 50_050.0,
        };
        assert!(broken(&fair).is_none());
        let lost = UserSplit {
            a: 100_000,
            b: 90_000,
            expected_b: 95_000.0,
        };
        assert!(broken(&lost).unwrap().contains("90000 users"));
        // At 10%, 10% of the users on B is what the shares expect.
        let ramped = UserSplit {
            a: 90_000,
            b: 10_000,
            expected_b: 10_000.0,
        };
        assert!(broken(&ramped).is_none());
    }
}
