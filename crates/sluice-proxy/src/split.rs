//! The weighted, sticky split between variant A (today's release) and B (the
//! candidate): a key per user, hashed to one of 10,000 buckets; B gets the
//! buckets below its weight. So a user stays on one variant, and one on B at
//! 5% is still on B at 25%.

use http::HeaderName;

/// The cookie the proxy sets on first contact when the split is by cookie.
pub const COOKIE: &str = "sluice_key";
/// The header a tester may force a variant with, when the environment allows it.
pub const FORCE_HEADER: &str = "x-sluice-variant";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    A,
    B,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::B => "b",
        }
    }

    pub fn parse(text: &str) -> Option<Variant> {
        match text.trim() {
            "a" | "A" => Some(Variant::A),
            "b" | "B" => Some(Variant::B),
            _ => None,
        }
    }

    pub fn other(self) -> Variant {
        match self {
            Variant::A => Variant::B,
            Variant::B => Variant::A,
        }
    }
}

/// Where a user's key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    Cookie,
    Header(HeaderName),
}

/// A validated split: B's weight in basis points (0 to 10,000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    weight_bp: u32,
    pub sticky: Sticky,
    pub allow_force: bool,
}

impl Split {
    /// B's share in percent, from 0 to 100 (fractions down to 0.01%).
    pub fn new(percent: f64, sticky: Sticky, allow_force: bool) -> Result<Split, String> {
        if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
            return Err(format!(
                "B's weight must be from 0 to 100 percent, not {percent}"
            ));
        }
        Ok(Split {
            weight_bp: (percent * 100.0).round() as u32,
            sticky,
            allow_force,
        })
    }

    pub fn percent(&self) -> f64 {
        f64::from(self.weight_bp) / 100.0
    }

    /// The variant of a user's key.
    pub fn variant_for(&self, key: &str) -> Variant {
        self.variant_of(user_id(key))
    }

    /// The variant of a user by their number ([`user_id`]).
    pub fn variant_of(&self, user: u64) -> Variant {
        if bucket_of(user) < self.weight_bp {
            Variant::B
        } else {
            Variant::A
        }
    }
}

/// A user's number from their sticky key: FNV-1a, then a SplitMix64
/// finalizer, both fixed, so that a key keeps its number (and bucket) across
/// restarts and upgrades. Goals count users by it.
pub fn user_id(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A key's bucket, 0 to 9,999.
pub fn bucket(key: &str) -> u32 {
    bucket_of(user_id(key))
}

fn bucket_of(user: u64) -> u32 {
    (user % 10_000) as u32
}

/// A fresh key for a user seen for the first time.
pub fn new_key() -> String {
    let bits = rand::random::<u64>();
    (0..16)
        .rev()
        .map(|digit| char::from(b"0123456789abcdef"[(bits >> (digit * 4)) as usize & 15]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn the_share_of_keys_on_b_matches_its_weight_within_half_a_point() {
        let keys = keys(100_000);
        for percent in [1.0, 5.0, 25.0, 50.0, 100.0] {
            let split = Split::new(percent, Sticky::Cookie, false).unwrap();
            let on_b = keys
                .iter()
                .filter(|k| split.variant_for(k) == Variant::B)
                .count();
            let share = 100.0 * on_b as f64 / keys.len() as f64;
            assert!(
                (share - percent).abs() <= 0.5,
                "{share:.3}% on B at {percent}%"
            );
        }
    }

    #[test]
    fn a_key_on_b_stays_on_b_when_the_weight_grows() {
        let keys = keys(100_000);
        let steps: Vec<Split> = [1.0, 5.0, 25.0, 50.0, 100.0]
            .iter()
            .map(|p| Split::new(*p, Sticky::Cookie, false).unwrap())
            .collect();
        for pair in steps.windows(2) {
            for key in &keys {
                if pair[0].variant_for(key) == Variant::B {
                    assert_eq!(
                        pair[1].variant_for(key),
                        Variant::B,
                        "{key} left B going from {}% to {}%",
                        pair[0].percent(),
                        pair[1].percent()
                    );
                }
            }
        }
    }

    #[test]
    fn a_weight_outside_0_to_100_cannot_be_built() {
        assert!(Split::new(-1.0, Sticky::Cookie, false).is_err());
        assert!(Split::new(100.5, Sticky::Cookie, false).is_err());
        assert!(Split::new(f64::NAN, Sticky::Cookie, false).is_err());
        assert_eq!(
            Split::new(0.01, Sticky::Cookie, false).unwrap().percent(),
            0.01
        );
    }

    #[test]
    fn buckets_are_fixed() {
        // A change here moves users between variants after an upgrade.
        assert_eq!(bucket("user-1"), bucket("user-1"));
        assert_eq!(bucket(""), 6_203);
        assert_eq!(bucket("user-1"), bucket(&String::from("user-1")));
    }
}
