//! Validity windows of certificates and the time conversions they need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The time window in which a certificate is valid, both ends included.
///
/// Certificates store whole seconds: sub-second parts are dropped when issuing.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// // A window that already closed, to test that expired certificates are refused.
/// let now = SystemTime::now();
/// let expired = certs::Validity::new(now - Duration::from_secs(7200), now - Duration::from_secs(3600));
/// assert!(!expired.contains(now));
/// assert!(certs::Validity::days(1).contains(now));
/// ```
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Validity {
    /// First instant at which the certificate is valid.
    pub not_before: SystemTime,
    /// Last instant at which the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Default lifetime of a node certificate: one year.
    pub const NODE_DAYS: u32 = 365;
    /// Default lifetime of a CA certificate: about ten years.
    pub const CA_DAYS: u32 = 3650;

    /// A window from `not_before` to `not_after`.
    ///
    /// Issuing checks that `not_after` is not before `not_before`.
    pub fn new(not_before: SystemTime, not_after: SystemTime) -> Self {
        Self { not_before, not_after }
    }

    /// A window that opened an hour ago and closes `days` days from now.
    ///
    /// The hour in the past tolerates clocks that are a little behind on other hosts.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY),
        }
    }

    /// Whether `time` lies inside the window.
    pub fn contains(&self, time: SystemTime) -> bool {
        self.not_before <= time && time <= self.not_after
    }
}

/// Converts to the date type the certificate generator takes, dropping sub-second parts.
pub(crate) fn to_offset(time: SystemTime) -> OffsetDateTime {
    let datetime = OffsetDateTime::from(time);
    datetime.replace_nanosecond(0).unwrap_or(datetime)
}

/// Converts a certificate date (seconds since the Unix epoch, possibly negative).
pub(crate) fn from_unix(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()),
    }
}

/// Formats a time as RFC 3339 in UTC, for error messages.
pub(crate) fn format(time: SystemTime) -> String {
    let datetime = to_offset(time);
    datetime.format(&Rfc3339).unwrap_or_else(|_| datetime.to_string())
}

/// How far in the past a default window opens.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
const SECONDS_PER_DAY: u64 = 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_rfc3339_utc() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        assert_eq!(format(time), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn from_unix_handles_dates_before_the_epoch() {
        assert_eq!(from_unix(-10), UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(from_unix(10), UNIX_EPOCH + Duration::from_secs(10));
    }

    #[test]
    fn days_contains_now() {
        let window = Validity::days(1);
        assert!(window.contains(SystemTime::now()));
        assert!(!window.contains(SystemTime::now() + Duration::from_secs(2 * SECONDS_PER_DAY)));
    }
}
