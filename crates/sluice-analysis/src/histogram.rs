//! A latency histogram with buckets 1% wide (relative), mergeable, from which
//! quantiles are read as upper bounds.

use serde::{Deserialize, Serialize};

const GROWTH: f64 = 1.01;
/// The most buckets a histogram read from outside may have: 1.01^4096
/// microseconds is far past any latency worth counting.
const MAX_BUCKETS: usize = 4096;

/// Sent as its buckets that hold anything (an agent's entry point sends
/// its windows: most of a histogram's buckets are empty) and, read from
/// outside, checked: bounded, and its total the sum of its counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(into = "SparseHistogram", try_from = "SparseHistogram")]
pub struct LogHistogram {
    /// Bucket `i` holds values in `[GROWTH^i, GROWTH^(i+1))` microseconds; bucket 0 also holds smaller ones.
    counts: Vec<u64>,
    total: u64,
}

/// A histogram as sent: `[bucket, count]` for each bucket holding anything.
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    buckets: Vec<(u32, u64)>,
    total: u64,
}

impl From<LogHistogram> for SparseHistogram {
    fn from(h: LogHistogram) -> SparseHistogram {
        let buckets = (h.counts.iter().enumerate())
            .filter(|(_, count)| **count > 0)
            .map(|(i, count)| (i as u32, *count))
            .collect();
        SparseHistogram {
            buckets,
            total: h.total,
        }
    }
}

impl TryFrom<SparseHistogram> for LogHistogram {
    type Error = String;

    fn try_from(sent: SparseHistogram) -> Result<Self, String> {
        let mut counts = Vec::new();
        let mut sum: u64 = 0;
        for (index, count) in sent.buckets {
            let index = index as usize;
            if index >= MAX_BUCKETS {
                return Err(format!(
                    "a latency histogram has at most {MAX_BUCKETS} buckets, not bucket {index}"
                ));
            }
            if counts.len() <= index {
                counts.resize(index + 1, 0);
            }
            counts[index] += count;
            sum = sum
                .checked_add(count)
                .ok_or("a latency histogram's counts overflow")?;
        }
        if sum != sent.total {
            return Err("a latency histogram's total is not the sum of its counts".into());
        }
        Ok(LogHistogram {
            counts,
            total: sent.total,
        })
    }
}

fn bucket(micros: f64) -> usize {
    if micros <= 1.0 {
        0
    } else {
        (micros.ln() / GROWTH.ln()) as usize
    }
}

fn upper_edge(index: usize) -> f64 {
    GROWTH.powi(index as i32 + 1)
}

impl LogHistogram {
    pub fn record(&mut self, micros: f64) {
        let i = bucket(micros);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &LogHistogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    /// Takes out what `other` added by [`LogHistogram::merge`] (a sliding sum).
    pub fn subtract(&mut self, other: &LogHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_sub(*theirs);
        }
        self.total = self.total.saturating_sub(other.total);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// An upper bound of the `q` quantile: the top of the bucket holding the
    /// rank `n q + 2 sqrt(n q (1 - q))`, two standard errors above the
    /// estimate, so that the true quantile is rarely above it.
    pub fn upper_quantile(&self, q: f64) -> Option<f64> {
        self.upper_bound(q, 2.0)
    }

    fn upper_bound(&self, q: f64, z: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let n = self.total as f64;
        let rank = (n * q + z * (n * q * (1.0 - q)).sqrt()).ceil().min(n) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank.max(1) {
                return Some(upper_edge(i));
            }
        }
        self.counts.len().checked_sub(1).map(upper_edge)
    }

    /// A bound of the `q` quantile `z` standard errors away from the
    /// estimate: below it for a negative `z` (the bottom of its bucket),
    /// above it for a positive one (the top).
    pub fn quantile_bound(&self, q: f64, z: f64) -> Option<f64> {
        if z > 0.0 {
            return self.upper_bound(q, z);
        }
        if self.total == 0 {
            return None;
        }
        let n = self.total as f64;
        let rank = (n * q + z * (n * q * (1.0 - q)).sqrt()).floor().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(if i == 0 { 0.0 } else { GROWTH.powi(i as i32) });
            }
        }
        None
    }

    /// A plain quantile estimate (the middle of its bucket), for reports.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(GROWTH.powi(i as i32) * (1.0 + GROWTH) / 2.0);
            }
        }
        None
    }

    /// How many values lie in buckets entirely above `micros`.
    pub fn count_above(&self, micros: f64) -> u64 {
        let first = bucket(micros) + 1;
        self.counts.iter().skip(first).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_from_outside_is_checked() {
        let mut h = LogHistogram::default();
        h.record(1500.0);
        let text = serde_json::to_string(&h).unwrap();
        let back: LogHistogram = serde_json::from_str(&text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.quantile(0.5), h.quantile(0.5));
        assert_eq!(
            text, r#"{"buckets":[[734,1]],"total":1}"#,
            "only what holds anything"
        );
        let lying = r#"{"buckets":[[0,1],[1,2]],"total":5}"#;
        let error = serde_json::from_str::<LogHistogram>(lying).unwrap_err();
        assert!(error.to_string().contains("not the sum"), "{error}");
        let overflowing = format!(r#"{{"buckets":[[0,{}],[1,1]],"total":0}}"#, u64::MAX);
        assert!(serde_json::from_str::<LogHistogram>(&overflowing).is_err());
        let far = r#"{"buckets":[[5000,1]],"total":1}"#;
        let error = serde_json::from_str::<LogHistogram>(far).unwrap_err();
        assert!(error.to_string().contains("at most 4096"), "{error}");
    }

    #[test]
    fn quantiles_within_a_percent() {
        let mut h = LogHistogram::default();
        for v in 1..=10_000 {
            h.record(v as f64);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 / 5000.0 - 1.0).abs() < 0.015, "{p50}");
        let upper = h.upper_quantile(0.5).unwrap();
        assert!((5000.0..5200.0).contains(&upper), "{upper}");
        assert!(h.count_above(upper) <= 5000);
        let lower = h.quantile_bound(0.5, -2.0).unwrap();
        assert!((4800.0..5000.0).contains(&lower), "{lower}");
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (LogHistogram::default(), LogHistogram::default());
        a.record(10.0);
        b.record(1000.0);
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert_eq!(a.count_above(100.0), 1);
    }
}
