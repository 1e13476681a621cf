//! Failed attempts per client address (sign-ins, API tokens), counted
//! atomically: an attempt is counted when it starts and forgiven when it
//! succeeds, so thirty at once cannot all slip under the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures an address may have within a window.
pub struct Attempts {
    max: u32,
    window: Duration,
    /// Per address: attempts not forgiven, since when.
    counted: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The addresses kept at most: old entries go first beyond this.
const MAX_ADDRESSES: usize = 100_000;

impl Attempts {
    pub fn new(max: u32, window: Duration) -> Self {
        Attempts {
            max,
            window,
            counted: Mutex::default(),
        }
    }

    /// Counts an attempt from `ip`, or `Err(seconds to wait)` when it has
    /// failed too often; [`Attempts::succeeded`] forgives it.
    pub fn begin(&self, ip: IpAddr) -> Result<(), u64> {
        let mut counted = self.counted.lock().unwrap();
        if counted.len() >= MAX_ADDRESSES {
            let window = self.window;
            counted.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = counted.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        if entry.0 >= self.max {
            return Err((self.window - entry.1.elapsed()).as_secs() + 1);
        }
        entry.0 += 1;
        Ok(())
    }

    /// The attempt succeeded: the address starts afresh.
    pub fn succeeded(&self, ip: IpAddr) {
        self.counted.lock().unwrap().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_attempts_cannot_all_slip_under_the_limit() {
        let attempts = std::sync::Arc::new(Attempts::new(5, Duration::from_secs(300)));
        let ip: IpAddr = [192, 0, 2, 1].into();
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..30)
                .map(|_| scope.spawn(|| attempts.begin(ip).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(allowed, 5, "thirty at once, five tried");
        assert!(
            attempts.begin([192, 0, 2, 2].into()).is_ok(),
            "others are not held up"
        );
        attempts.succeeded(ip);
        assert!(attempts.begin(ip).is_ok(), "a success starts afresh");
    }
}
