//! Time: one injectable [`Clock`] for every rule that depends on time (traffic
//! windows, alerts, leases and the reconciler, token lifetimes), and the formats the
//! service stores and prints, through `jiff`: Unix milliseconds, RFC 3339 with
//! milliseconds, HTTP dates and human durations such as `30m`.
//!
//! Durations measured inside the process (timeouts, the circuit breakers) use
//! tokio's clock directly. [`Clock::tokio`] follows that clock too, so a test on
//! tokio's paused clock moves every rule at once with `tokio::time::advance`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// Tells the wall time, in Unix milliseconds.
///
/// [`Clock::system`] reads the system's clock, as production must: leases are
/// compared across instances through the database, so each instance follows the
/// clock the machine keeps in step, not a count of its own. [`Clock::tokio`]
/// starts at the system's time and then moves with tokio's clock, paused or not.
/// Either can be put forward by hand ([`Clock::advance`]) where tokio's clock cannot
/// be paused (a test that talks to a real database, say). Clones share one offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    origin: Option<(tokio::time::Instant, i64)>,
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads the system's time once, then moves with tokio's clock.
    pub fn tokio() -> Self {
        Self {
            origin: Some((tokio::time::Instant::now(), system_ms())),
            offset_ms: Arc::default(),
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let base = match self.origin {
            None => system_ms(),
            Some((instant, at_ms)) => at_ms.saturating_add(millis_i64(instant.elapsed())),
        };
        base.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Now, in whole Unix seconds.
    pub fn now_secs(&self) -> u64 {
        u64::try_from(self.now_ms().div_euclid(1000)).unwrap_or(0)
    }

    /// Moves the clock forward by `by`, for this clock and every clone of it.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(millis_i64(by), Ordering::Relaxed);
    }
}

fn system_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn millis_i64(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Whole milliseconds of `duration`, saturating at `u64::MAX`.
pub fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Formats Unix milliseconds as `2024-11-29T02:47:13.000Z`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    match Timestamp::from_millisecond(unix_ms) {
        Ok(timestamp) => format!("{timestamp:.3}"),
        // Outside the years -9999 to 9999: nothing this service stores.
        Err(_) => format!("{:.3}", if unix_ms < 0 { Timestamp::MIN } else { Timestamp::MAX }),
    }
}

/// Parses an RFC 3339 timestamp (`Z` or a numeric offset, any fraction) into Unix
/// milliseconds. Returns `None` for anything else.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, as in `Retry-After`) into
/// Unix milliseconds.
pub fn parse_http_date_ms(text: &str) -> Option<i64> {
    jiff::fmt::rfc2822::parse(text.trim())
        .ok()
        .map(|zoned| zoned.timestamp().as_millisecond())
}

/// Parses durations such as `500ms`, `30s`, `15m`, `1h`, `7d` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let span: Span = text
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; write it as 500ms, 30s, 15m, 1h or 7d"))?;
    let signed: SignedDuration = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("'{text}' is too long"))?;
    Duration::try_from(signed).map_err(|_| format!("'{text}' is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_732_845_600_000), "2024-11-29T02:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(parse_rfc3339_ms("2024-11-29T03:00:00+01:00"), Some(1_732_845_600_000));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn http_dates_are_read_as_retry_after_sends_them() {
        assert_eq!(
            parse_http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_http_date_ms("soon"), None);
    }

    #[test]
    fn parses_durations_with_units_and_rejects_the_rest() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("-3m").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time_and_by_hand() {
        let clock = Clock::tokio();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms() - start, 90_000);
        clock.clone().advance(Duration::from_secs(10));
        assert_eq!(clock.now_ms() - start, 100_000);
    }
}
