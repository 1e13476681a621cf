//! What time it is, for the decisions that depend on it: a promotion's
//! gates (soak, freezes). The engine is given a clock; tests give one they
//! move by hand.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved: it starts at the real time, so
/// that what the store stamps and what it says stay comparable.
#[cfg(test)]
pub(crate) struct FakeClock(std::sync::Mutex<DateTime<Utc>>);

#[cfg(test)]
impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock(std::sync::Mutex::new(Utc::now()))
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap();
        *now += chrono::Duration::from_std(by).unwrap();
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}
