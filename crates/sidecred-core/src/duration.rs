//! Human durations in config: "250ms", "30s", "5m", "1h30m", "2d", "0".

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The longest duration accepted anywhere (ten years): time arithmetic on it cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// A duration read from config text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

/// Why a duration does not parse; each names the text it was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration `{text}`: expected a number at `{rest}`")]
    Number { text: String, rest: String },
    #[error("invalid duration `{text}`: number too large")]
    TooLarge { text: String },
    #[error("invalid duration `{text}`: missing unit (ms, s, m, h, d)")]
    NoUnit { text: String },
    #[error("invalid duration `{text}`: unknown unit `{unit}` (ms, s, m, h, d)")]
    Unit { text: String, unit: String },
    #[error("invalid duration `{text}`: longer than 3650d")]
    TooLong { text: String },
}

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let text_owned = || text.to_string();
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::Number {
                text: text_owned(),
                rest: rest.to_string(),
            });
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge { text: text_owned() })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(DurationError::NoUnit { text: text_owned() }),
            u => {
                return Err(DurationError::Unit {
                    text: text_owned(),
                    unit: u.to_string(),
                })
            }
        };
        total = n
            .checked_mul(scale)
            .map(Duration::from_millis)
            .and_then(|part| total.checked_add(part))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| DurationError::TooLong { text: text_owned() })?;
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("0", 0),
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
        ];
        for (t, ms) in ok {
            assert_eq!(parse_duration(t).unwrap(), Duration::from_millis(ms), "{t}");
        }
        for bad in [
            "",
            "5",
            "5x",
            "m",
            "1h 5m",
            "-1s",
            "3651d",
            "3650d1ms",
            "99999999999999999d",
            "18446744073709551615ms1ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
