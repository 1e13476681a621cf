//! What time it is, for the decisions that depend on it: a promotion's
//! gates (soak, freezes) and an experiment's steps, holds and the seconds
//! its entry point counts requests in. The engine is given a clock; tests
//! give one that stands still until moved, or one that runs faster.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock for tests: it starts at the real time (so that what the store
/// stamps and what it says stay comparable), then runs `speed` times as
/// fast as the real one (0: it stands still), and moves when told.
#[cfg(test)]
pub(crate) struct FakeClock {
    base: std::sync::Mutex<DateTime<Utc>>,
    started: std::time::Instant,
    speed: u32,
}

#[cfg(test)]
impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock::running(0)
    }

    pub fn running(speed: u32) -> FakeClock {
        FakeClock {
            base: std::sync::Mutex::new(Utc::now()),
            started: std::time::Instant::now(),
            speed,
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut base = self.base.lock().unwrap();
        *base += chrono::Duration::from_std(by).unwrap();
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        let ran = self.started.elapsed() * self.speed;
        *self.base.lock().unwrap() + chrono::Duration::from_std(ran).unwrap()
    }
}
