//! Is B slower than A by an effect that matters? B's requests of each second
//! are compared with A's of the same seconds (so a trend or a step that both
//! see cancels out), only once each instance is warm (its first requests are
//! not judged), and a rollback needs both the sequential test and a
//! practical effect against A's slowest instance (so that one slow machine
//! is not taken for a slow release).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{LogHistogram, QuantileTest};

/// How many standard errors the effect's bounds keep from the estimates:
/// the effect is looked at every second, so its noise must not decide.
const EFFECT_Z: f64 = 1.0;

/// Which variant an instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Side {
    A,
    B,
}

/// One instance's requests of one second.
#[derive(Clone, Copy, Debug)]
pub struct InstanceSecond<'a> {
    pub instance: &'a str,
    pub side: Side,
    pub latency: &'a LogHistogram,
}

/// The smallest slowdown worth a rollback: both relative and absolute.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MinEffect {
    /// 0.10: B's quantile at least 10% above A's.
    pub ratio: f64,
    /// And at least this many microseconds above it.
    pub micros: f64,
}

impl Default for MinEffect {
    fn default() -> Self {
        MinEffect {
            ratio: 0.10,
            micros: 2_000.0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LatencyConfig {
    /// Requests each instance serves before its latency is judged.
    pub warm_up_requests: u64,
    pub min_effect: MinEffect,
    /// B's second `s` is judged against A's seconds `s - span ..= s + span`.
    pub span: u64,
    /// A's requests in that span needed to read its quantile.
    pub min_reference: u64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            warm_up_requests: 200,
            min_effect: MinEffect::default(),
            span: 5,
            min_reference: 100,
        }
    }
}

/// A's and B's warm requests of one second, waiting for A's later seconds.
#[derive(Default)]
struct Second {
    a: BTreeMap<String, LogHistogram>,
    a_pooled: LogHistogram,
    b: LogHistogram,
    b_each: BTreeMap<String, LogHistogram>,
}

/// B's quantile against A's slowest and fastest instances', over the judged
/// seconds: estimates for reports, and the bounds that decide (B's lower,
/// the slowest A's upper), since the effect is looked at every second.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Effect {
    pub b_micros: f64,
    pub a_micros: f64,
    pub a_fastest_micros: f64,
    pub b_lower_micros: f64,
    pub a_upper_micros: f64,
}

impl Effect {
    /// Slower than A's slowest instance by the minimum effect, and by more
    /// than A's instances differ among themselves: with one B instance, a
    /// slow machine and a slow release look alike, and A's spread is what
    /// tells how far apart machines alone put them.
    pub fn matters(&self, min: MinEffect) -> bool {
        let spread = self.a_micros / self.a_fastest_micros.max(f64::MIN_POSITIVE) - 1.0;
        self.b_lower_micros >= self.a_upper_micros * (1.0 + min.ratio.max(spread))
            && self.b_lower_micros - self.a_upper_micros >= min.micros
    }
}

pub struct LatencyJudge {
    config: LatencyConfig,
    /// Requests each instance has served so far (for its warm-up).
    served: HashMap<String, u64>,
    /// Seconds not yet judged, and the ones before them still in a span.
    seconds: BTreeMap<u64, Second>,
    /// Seconds up to this one are judged.
    judged_through: Option<u64>,
    /// A's requests of the seconds `reference_seconds` (a sliding sum).
    reference: LogHistogram,
    reference_seconds: std::collections::BTreeSet<u64>,
    pub p50: QuantileTest,
    pub p95: QuantileTest,
    /// B's judged requests, and each A instance's over the same seconds.
    b_judged: LogHistogram,
    a_judged: BTreeMap<String, LogHistogram>,
    /// Each B instance's judged requests, to say which of them was slow.
    b_each: BTreeMap<String, LogHistogram>,
}

/// One instance's judged (warm) requests: how many, and its p50 and p95.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceLatency {
    pub instance: String,
    pub side: Side,
    pub requests: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl LatencyJudge {
    pub fn new(config: LatencyConfig) -> Self {
        LatencyJudge {
            config,
            served: HashMap::new(),
            seconds: BTreeMap::new(),
            judged_through: None,
            reference: LogHistogram::default(),
            reference_seconds: Default::default(),
            p50: QuantileTest::new(0.5),
            p95: QuantileTest::new(0.95),
            b_judged: LogHistogram::default(),
            a_judged: BTreeMap::new(),
            b_each: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &LatencyConfig {
        &self.config
    }

    /// Adds one second's requests (seconds in increasing order); judges the
    /// seconds whose span of A is now complete.
    pub fn observe(&mut self, second: u64, instances: &[InstanceSecond]) {
        let mut this = Second::default();
        for i in instances {
            let served = self.served.entry(i.instance.to_string()).or_default();
            let warm = *served >= self.config.warm_up_requests;
            *served += i.latency.len();
            if !warm || i.latency.is_empty() {
                continue;
            }
            match i.side {
                Side::A => this
                    .a
                    .entry(i.instance.to_string())
                    .or_default()
                    .merge(i.latency),
                Side::B => this
                    .b_each
                    .entry(i.instance.to_string())
                    .or_default()
                    .merge(i.latency),
            }
        }
        let slot = self.seconds.entry(second).or_default();
        for (instance, latency) in this.a {
            slot.a_pooled.merge(&latency);
            slot.a.entry(instance).or_default().merge(&latency);
        }
        for (instance, latency) in this.b_each {
            slot.b.merge(&latency);
            slot.b_each.entry(instance).or_default().merge(&latency);
        }
        self.judge_through(second.saturating_sub(self.config.span));
    }

    /// Judges every waiting second up to `last`.
    fn judge_through(&mut self, last: u64) {
        let waiting: Vec<u64> = self
            .seconds
            .range(..=last)
            .map(|(s, _)| *s)
            .filter(|s| self.judged_through.is_none_or(|j| *s > j))
            .collect();
        for second in waiting {
            self.judge(second);
            self.judged_through = Some(second);
        }
        // What no future span reaches is dropped (it has left the reference).
        if let Some(j) = self.judged_through {
            let keep_from = (j + 1).saturating_sub(self.config.span);
            let kept = self.seconds.split_off(&keep_from);
            for (s, old) in std::mem::replace(&mut self.seconds, kept) {
                if self.reference_seconds.remove(&s) {
                    self.reference.subtract(&old.a_pooled);
                }
            }
        }
    }

    fn judge(&mut self, second: u64) {
        self.slide_reference(second);
        let Some(this) = self.seconds.get(&second) else {
            return;
        };
        if this.b.is_empty() || self.reference.len() < self.config.min_reference {
            return;
        }
        for test in [&mut self.p50, &mut self.p95] {
            if let Some(bound) = self.reference.upper_quantile(test.quantile) {
                test.observe(this.b.count_above(bound), this.b.len());
            }
        }
        self.b_judged.merge(&this.b);
        for (instance, latency) in &this.b_each {
            self.b_each
                .entry(instance.clone())
                .or_default()
                .merge(latency);
        }
        for (instance, latency) in &this.a {
            self.a_judged
                .entry(instance.clone())
                .or_default()
                .merge(latency);
        }
    }

    /// Makes `reference` A's requests of `second - span ..= second + span`.
    fn slide_reference(&mut self, second: u64) {
        let span = self.config.span;
        let (from, to) = (second.saturating_sub(span), second + span);
        let leaving: Vec<u64> = self.reference_seconds.range(..from).copied().collect();
        for s in leaving {
            self.reference_seconds.remove(&s);
            if let Some(old) = self.seconds.get(&s) {
                self.reference.subtract(&old.a_pooled);
            }
        }
        for (s, entry) in self.seconds.range(from..=to) {
            if self.reference_seconds.insert(*s) {
                self.reference.merge(&entry.a_pooled);
            }
        }
    }

    /// B's `q` quantile against the slowest A instance's, over the judged
    /// seconds; an instance counts once it has enough requests to say.
    pub fn effect(&self, q: f64) -> Option<Effect> {
        let b_micros = self.b_judged.quantile(q)?;
        let b_lower_micros = self.b_judged.quantile_bound(q, -EFFECT_Z)?;
        let enough = (10.0 / (1.0 - q)).max(20.0) as u64;
        let mut each: Vec<&LogHistogram> = self
            .a_judged
            .values()
            .filter(|h| h.len() >= enough)
            .collect();
        let mut pooled = LogHistogram::default();
        if each.is_empty() {
            self.a_judged.values().for_each(|h| pooled.merge(h));
            each.push(&pooled);
        }
        let estimates: Vec<f64> = each.iter().filter_map(|h| h.quantile(q)).collect();
        let uppers = each.iter().filter_map(|h| h.quantile_bound(q, EFFECT_Z));
        Some(Effect {
            b_micros,
            b_lower_micros,
            a_micros: estimates.iter().copied().reduce(f64::max)?,
            a_fastest_micros: estimates.iter().copied().reduce(f64::min)?,
            a_upper_micros: uppers.reduce(f64::max)?,
        })
    }

    /// Every instance's judged requests, A's then B's: who was slow.
    pub fn instances(&self) -> Vec<InstanceLatency> {
        let each = |side: Side, all: &BTreeMap<String, LogHistogram>| {
            all.iter()
                .map(|(instance, h)| InstanceLatency {
                    instance: instance.clone(),
                    side,
                    requests: h.len(),
                    p50_ms: h.quantile(0.5).map(|us| (us / 10.0).round() / 100.0),
                    p95_ms: h.quantile(0.95).map(|us| (us / 10.0).round() / 100.0),
                })
                .collect::<Vec<_>>()
        };
        let mut out = each(Side::A, &self.a_judged);
        out.extend(each(Side::B, &self.b_each));
        out
    }

    pub fn test(&self, q: f64) -> &QuantileTest {
        if q >= 0.9 { &self.p95 } else { &self.p50 }
    }

    /// Whether B is slower at `q` by a practical effect, at level `alpha`.
    pub fn slower(&self, q: f64, alpha: f64) -> Option<Effect> {
        let effect = self.effect(q)?;
        (self.test(q).rejects(alpha) && effect.matters(self.config.min_effect)).then_some(effect)
    }

    /// The test's likelihood ratio, or 0 when the effect it sees is too
    /// small to act on (so that it holds no step).
    pub fn weighing(&self, q: f64) -> f64 {
        match self.effect(q) {
            Some(effect) if !effect.matters(self.config.min_effect) => 0.0,
            _ => self.test(q).likelihood_ratio(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = f64>) -> LogHistogram {
        let mut h = LogHistogram::default();
        values.into_iter().for_each(|v| h.record(v));
        h
    }

    /// `seconds` of traffic: A's instance at `a` µs, B's at `b` µs, spread ±10%.
    fn run(judge: &mut LatencyJudge, seconds: u64, a: f64, b: f64) {
        let spread = |m: f64, n: usize| (0..n).map(move |i| m * (0.9 + 0.2 * i as f64 / n as f64));
        for s in 0..seconds {
            let (ha, hb) = (hist(spread(a, 100)), hist(spread(b, 20)));
            judge.observe(
                s,
                &[
                    InstanceSecond {
                        instance: "a1",
                        side: Side::A,
                        latency: &ha,
                    },
                    InstanceSecond {
                        instance: "b1",
                        side: Side::B,
                        latency: &hb,
                    },
                ],
            );
        }
    }

    #[test]
    fn seconds_since_the_epoch_are_judged_too() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        let (ha, hb) = (hist([20_000.0; 100]), hist([20_000.0; 20]));
        for s in 1_795_975_936..1_795_975_966 {
            judge.observe(
                s,
                &[
                    InstanceSecond {
                        instance: "a1",
                        side: Side::A,
                        latency: &ha,
                    },
                    InstanceSecond {
                        instance: "b1",
                        side: Side::B,
                        latency: &hb,
                    },
                ],
            );
        }
        assert!(judge.p50.total > 0);
    }

    #[test]
    fn a_slower_b_by_a_practical_effect_is_slower() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        run(&mut judge, 60, 20_000.0, 30_000.0);
        let effect = judge.slower(0.5, 0.05).expect("slower");
        assert!(effect.b_micros > effect.a_micros * 1.4, "{effect:?}");
    }

    #[test]
    fn each_instance_s_warm_latency_is_reported_by_name() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        run(&mut judge, 60, 2_000.0, 6_000.0);
        let shown = judge.instances();
        let names: Vec<(&str, Side)> = shown
            .iter()
            .map(|i| (i.instance.as_str(), i.side))
            .collect();
        assert_eq!(names, [("a1", Side::A), ("b1", Side::B)]);
        let p95 = |i: &InstanceLatency| i.p95_ms.unwrap();
        assert!((1.9..2.4).contains(&p95(&shown[0])), "{shown:?}");
        assert!((5.7..7.2).contains(&p95(&shown[1])), "{shown:?}");
        // Warm-up and the last seconds' span are not judged.
        assert!(shown[1].requests < 60 * 20 && shown[1].requests > 0);
    }

    #[test]
    fn a_tiny_slowdown_is_not_acted_on_however_sure() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        // 5% and 1 ms slower: the test sees it, the effect does not matter.
        run(&mut judge, 300, 20_000.0, 21_000.0);
        assert!(judge.p50.rejects(0.05));
        assert!(judge.slower(0.5, 0.05).is_none());
        assert_eq!(judge.weighing(0.5), 0.0);
    }

    #[test]
    fn the_first_requests_of_each_instance_are_not_judged() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        // B serves 20 a second: its first ten seconds are its warm-up.
        run(&mut judge, 10, 20_000.0, 90_000.0);
        run(&mut judge, 60, 20_000.0, 20_000.0);
        assert!(judge.slower(0.5, 0.05).is_none());
        assert!(judge.p50.likelihood_ratio() < 1.0);
    }

    #[test]
    fn the_reference_is_a_of_the_span_around_the_judged_second() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        run(&mut judge, 40, 20_000.0, 20_000.0);
        // Judged through 34; what second 35's span (30..=40) has so far is 30..=39.
        assert_eq!(judge.judged_through, Some(34));
        assert_eq!(judge.reference.len(), 10 * 100);
        assert!(judge.seconds.keys().all(|s| *s >= 30));
    }

    #[test]
    fn the_last_seconds_wait_for_their_span() {
        let mut judge = LatencyJudge::new(LatencyConfig::default());
        run(&mut judge, 20, 20_000.0, 20_000.0);
        // Warm after 10 s (B's 200 requests); judged through second 14.
        assert_eq!(judge.judged_through, Some(14));
        assert_eq!(judge.p50.total, 5 * 20);
    }
}
