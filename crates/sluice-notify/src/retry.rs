//! Pure decisions: when a burst of notifications becomes a message, and
//! what follows a delivery attempt (sent, try again when, or give up).

use sluice_store::{AttemptResult, MessageStatus, Unbatched};

use crate::deliver::Delivery;

/// The first retry waits about this long; each next one twice as long.
pub const FIRST_RETRY_MS: i64 = 1_000;
/// No wait between retries is longer.
pub const MAX_RETRY_MS: i64 = 10 * 60 * 1000;
/// A `Retry-After` is honoured up to this.
pub const MAX_RETRY_AFTER_MS: i64 = 6 * 3600 * 1000;

/// Whether a channel's waiting notifications go out now: the burst's first
/// has waited `wait_ms` for others to join it, and the channel's previous
/// message is at least `interval_ms` old.
pub fn batch_due(unbatched: &Unbatched, wait_ms: i64, interval_ms: i64, now: i64) -> bool {
    now >= unbatched.oldest_at + wait_ms
        && unbatched
            .last_message_at
            .is_none_or(|last| now >= last + interval_ms)
}

/// What follows an attempt. `attempts` counts this one; `jitter` is in
/// [0, 1) and spreads retries of many messages apart.
pub fn after_attempt(
    delivery: &Delivery,
    attempts: i64,
    now: i64,
    give_up_at: i64,
    jitter: f64,
) -> AttemptResult {
    let (http_status, error, retry_in) = match delivery {
        Delivery::Sent { status } => {
            return AttemptResult {
                http_status: status.map(i64::from),
                error: None,
                status: MessageStatus::Sent,
                next_at: now,
            };
        }
        Delivery::Refused {
            status,
            retry_after,
            detail,
        } => {
            let error = if detail.is_empty() {
                format!("answered {status}")
            } else {
                format!("answered {status}: {detail}")
            };
            let retry_in = match status {
                429 | 500..=599 => Some(
                    retry_after
                        .as_deref()
                        .and_then(|h| retry_after_ms(h, now))
                        .map(|ms| ms.max(FIRST_RETRY_MS / 2))
                        .unwrap_or_else(|| backoff_ms(attempts, jitter)),
                ),
                _ => None,
            };
            (Some(i64::from(*status)), error, retry_in)
        }
        Delivery::Rejected(why) => (None, why.clone(), None),
        Delivery::Unreachable(why) => (None, why.clone(), Some(backoff_ms(attempts, jitter))),
    };
    match retry_in {
        Some(wait) if now + wait <= give_up_at => AttemptResult {
            http_status,
            error: Some(error),
            status: MessageStatus::Pending,
            next_at: now + wait,
        },
        Some(_) => AttemptResult {
            http_status,
            error: Some(format!(
                "gave up after 24 hours of failures; the last: {error}"
            )),
            status: MessageStatus::Failed,
            next_at: now,
        },
        None => AttemptResult {
            http_status,
            error: Some(format!("{error} (not retried: the receiver refused it)")),
            status: MessageStatus::Failed,
            next_at: now,
        },
    }
}

/// Exponential backoff with equal jitter: half the step for sure, half at random.
pub fn backoff_ms(attempts: i64, jitter: f64) -> i64 {
    let exponent = attempts.clamp(1, 30) - 1;
    let step = FIRST_RETRY_MS
        .saturating_mul(1 << exponent)
        .min(MAX_RETRY_MS);
    step / 2 + ((step / 2) as f64 * jitter.clamp(0.0, 1.0)) as i64
}

/// A `Retry-After` header, seconds or an HTTP date, as milliseconds from now.
pub fn retry_after_ms(header: &str, now: i64) -> Option<i64> {
    let header = header.trim();
    let ms = if let Ok(seconds) = header.parse::<i64>() {
        seconds.checked_mul(1000)?
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(header).ok()?;
        at.timestamp_millis() - now
    };
    Some(ms.clamp(0, MAX_RETRY_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 24 * 3600 * 1000;

    fn refused(status: u16, retry_after: Option<&str>) -> Delivery {
        Delivery::Refused {
            status,
            retry_after: retry_after.map(String::from),
            detail: String::new(),
        }
    }

    #[test]
    fn what_follows_an_attempt() {
        use MessageStatus::*;
        // What, the attempt's outcome, attempts so far, when retries stop,
        // and what follows: the status and the wait before the next try.
        type Case = (&'static str, Delivery, i64, i64, MessageStatus, Option<i64>);
        let cases: Vec<Case> = vec![
            (
                "2xx is sent",
                Delivery::Sent { status: Some(200) },
                1,
                NOW + DAY,
                Sent,
                None,
            ),
            (
                "500 waits 0.5-1 s first",
                refused(500, None),
                1,
                NOW + DAY,
                Pending,
                Some(500),
            ),
            (
                "503, third try, 2-4 s",
                refused(503, None),
                3,
                NOW + DAY,
                Pending,
                Some(2000),
            ),
            (
                "429 honours Retry-After",
                refused(429, Some("2")),
                1,
                NOW + DAY,
                Pending,
                Some(2000),
            ),
            (
                "503 honours Retry-After",
                refused(503, Some("7")),
                5,
                NOW + DAY,
                Pending,
                Some(7000),
            ),
            (
                "network errors are retried",
                Delivery::Unreachable("reset".into()),
                2,
                NOW + DAY,
                Pending,
                Some(1000),
            ),
            (
                "404 is not retried",
                refused(404, None),
                1,
                NOW + DAY,
                Failed,
                None,
            ),
            (
                "400 is not retried",
                refused(400, Some("5")),
                1,
                NOW + DAY,
                Failed,
                None,
            ),
            (
                "a redirect is not followed or retried",
                refused(301, None),
                1,
                NOW + DAY,
                Failed,
                None,
            ),
            (
                "SMTP 5xx is not retried",
                Delivery::Rejected("550 no such user".into()),
                1,
                NOW + DAY,
                Failed,
                None,
            ),
            (
                "past 24 h it gives up",
                refused(500, None),
                40,
                NOW + 1000,
                Failed,
                None,
            ),
        ];
        for (what, delivery, attempts, give_up_at, status, wait) in cases {
            let got = after_attempt(&delivery, attempts, NOW, give_up_at, 0.0);
            assert_eq!(got.status, status, "{what}");
            if let Some(wait) = wait {
                assert_eq!(got.next_at - NOW, wait, "{what}");
            }
            assert_eq!(got.error.is_none(), status == Sent, "{what}");
        }
    }

    #[test]
    fn backoff_doubles_spreads_and_stops_growing() {
        assert_eq!((backoff_ms(1, 0.0), backoff_ms(1, 0.999)), (500, 999));
        assert_eq!(backoff_ms(2, 0.0), 1000);
        assert_eq!(backoff_ms(30, 0.0), MAX_RETRY_MS / 2);
        assert_eq!(backoff_ms(1000, 1.0), MAX_RETRY_MS);
        assert_eq!(backoff_ms(0, 0.0), 500);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_within_bounds() {
        assert_eq!(retry_after_ms("2", NOW), Some(2000));
        assert_eq!(retry_after_ms(" 0 ", NOW), Some(0));
        assert_eq!(retry_after_ms("-5", NOW), Some(0));
        assert_eq!(retry_after_ms("99999999999", NOW), Some(MAX_RETRY_AFTER_MS));
        let date = chrono::DateTime::from_timestamp_millis(NOW + 30_000)
            .unwrap()
            .to_rfc2822();
        assert_eq!(retry_after_ms(&date, NOW), Some(30_000));
        assert_eq!(retry_after_ms("soon", NOW), None);
    }

    #[test]
    fn a_burst_waits_for_companions_and_the_channel_for_its_interval() {
        let u = |oldest_at, last_message_at| Unbatched {
            channel: "c".into(),
            oldest_at,
            last_message_at,
        };
        let cases = [
            (
                u(NOW - 5000, None),
                true,
                "waited long enough, first message",
            ),
            (u(NOW - 4999, None), false, "still gathering"),
            (
                u(NOW - 9000, Some(NOW - 29_000)),
                false,
                "the last message is too recent",
            ),
            (
                u(NOW - 9000, Some(NOW - 30_000)),
                true,
                "the interval has passed",
            ),
        ];
        for (unbatched, due, what) in cases {
            assert_eq!(batch_due(&unbatched, 5000, 30_000, NOW), due, "{what}");
        }
    }
}
