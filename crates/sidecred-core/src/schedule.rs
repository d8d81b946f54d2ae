//! Rotation schedules: a fixed interval (`rotate_every`) or a five-field cron expression
//! (`rotate_cron`, UTC). Pure: every function takes the time it works from.
//!
//! Interval slots are aligned to the Unix epoch, so every sidecar computes the same slot
//! boundaries without talking to the others; the slot start is the slot's id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When a secret rotates by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(Cron),
}

impl Schedule {
    /// The first slot boundary strictly after `t` (None when a cron expression never fires).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        match self {
            Schedule::Every(d) => {
                let step = d.as_millis().max(1) as u64;
                let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
                Some(UNIX_EPOCH + Duration::from_millis((ms / step + 1) * step))
            }
            Schedule::Cron(c) => c.next_after(t),
        }
    }
}

/// One cron field as the set of values it allows (bit i set: value i allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    bits: u64,
    /// Written as `*` (matters for the day-of-month / day-of-week rule).
    star: bool,
}

impl Field {
    fn has(&self, v: u32) -> bool {
        self.bits & (1u64 << v) != 0
    }
}

/// `minute hour day-of-month month day-of-week`, each `*`, a value, a range `a-b`, a step
/// `*/n` or `a-b/n`, or a comma list of those. Day of week 0-7 (0 and 7 are Sunday).
/// As in classic cron, when both day fields are restricted a day matches if either does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

fn parse_field(s: &str, name: &str, lo: u32, hi: u32) -> Result<Field, String> {
    let mut bits = 0u64;
    let num = |t: &str| -> Result<u32, String> {
        let v: u32 = t
            .parse()
            .map_err(|_| format!("{name}: `{t}` is not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{name}: {v} is outside {lo}-{hi}"));
        }
        Ok(v)
    };
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}: step `{st}` must be a positive number"))?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None if step > 1 => (num(r)?, hi),
                None => {
                    let v = num(r)?;
                    (v, v)
                }
            },
        };
        if a > b {
            return Err(format!("{name}: range `{range}` runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1u64 << v;
            v += step;
        }
    }
    Ok(Field {
        bits,
        star: s == "*",
    })
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "cron `{expr}`: expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                f.len()
            ));
        }
        let mut dow = parse_field(f[4], "day-of-week", 0, 7)?;
        if dow.has(7) {
            dow.bits = (dow.bits & !(1 << 7)) | 1;
        }
        Ok(Cron {
            minute: parse_field(f[0], "minute", 0, 59)?,
            hour: parse_field(f[1], "hour", 0, 23)?,
            dom: parse_field(f[2], "day-of-month", 1, 31)?,
            month: parse_field(f[3], "month", 1, 12)?,
            dow,
        })
    }

    fn day_matches(&self, d: &Civil) -> bool {
        let (dom, dow) = (self.dom.has(d.day), self.dow.has(d.weekday));
        match (self.dom.star, self.dow.star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first matching minute strictly after `t`; None if nothing matches within 5 years.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        let mut m = secs.div_euclid(60) + 1; // minutes since the epoch
        let limit = m + 5 * 366 * 24 * 60;
        while m < limit {
            let day = m.div_euclid(1440);
            let c = civil(day);
            if !self.month.has(c.month) || !self.day_matches(&c) {
                m = (day + 1) * 1440;
                continue;
            }
            let in_day = m - day * 1440;
            let (h, min) = ((in_day / 60) as u32, (in_day % 60) as u32);
            if !self.hour.has(h) {
                m = day * 1440 + (h as i64 + 1) * 60;
                continue;
            }
            if !self.minute.has(min) {
                m += 1;
                continue;
            }
            return Some(UNIX_EPOCH + Duration::from_secs(m as u64 * 60));
        }
        None
    }
}

/// A calendar day (UTC).
struct Civil {
    month: u32,
    day: u32,
    /// 0 = Sunday.
    weekday: u32,
}

/// Days since 1970-01-01 to a proleptic Gregorian date (era arithmetic: 400-year cycles).
fn civil(days: i64) -> Civil {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    Civil {
        month,
        day,
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// Parses a secret's schedule settings (at most one of the two).
pub fn from_config(
    every: Option<Duration>,
    cron: Option<&str>,
) -> Result<Option<Schedule>, String> {
    match (every, cron) {
        (Some(_), Some(_)) => Err("set rotate_every or rotate_cron, not both".into()),
        (Some(d), None) if d < Duration::from_secs(1) => {
            Err("rotate_every must be at least 1s".into())
        }
        (Some(d), None) => Ok(Some(Schedule::Every(d))),
        (None, Some(c)) => Ok(Some(Schedule::Cron(Cron::parse(c)?))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22 03:00:00 UTC is a Sunday.
    const SUN_0300: u64 = 1_795_316_400;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn civil_dates() {
        // (days since epoch, month, day, weekday)
        let cases = [
            (0, 1, 1, 4),
            (59, 3, 1, 0),      // 1970-03-01, Sunday
            (11_016, 2, 29, 2), // 2000-02-29, Tuesday
            (20_779, 11, 22, 0),
        ];
        for (d, m, day, wd) in cases {
            let c = civil(d);
            assert_eq!((c.month, c.day, c.weekday), (m, day, wd), "day {d}");
        }
        assert_eq!(SUN_0300 % 86_400, 3 * 3600);
        assert_eq!(civil((SUN_0300 / 86_400) as i64).weekday, 0);
    }

    #[test]
    fn cron_next_table() {
        let h = 3600;
        // (expression, from, expected next)
        let cases = [
            ("0 3 * * *", SUN_0300 - 1, SUN_0300),
            ("0 3 * * *", SUN_0300, SUN_0300 + 24 * h),
            ("*/15 * * * *", SUN_0300 + 60, SUN_0300 + 15 * 60),
            ("5,10 * * * *", SUN_0300 + 5 * 60, SUN_0300 + 10 * 60),
            ("0 9-17/4 * * *", SUN_0300, SUN_0300 + 6 * h),
            ("30 2 * * 1", SUN_0300, SUN_0300 + 24 * h - 30 * 60), // Monday 02:30
            ("0 0 * * 7", SUN_0300, SUN_0300 + 7 * 24 * h - 3 * h), // next Sunday 00:00
            ("0 0 1 12 *", SUN_0300, SUN_0300 + 9 * 24 * h - 3 * h), // Dec 1st
            // Both day fields restricted: the 1st of the month or any Monday.
            ("0 0 1 * 1", SUN_0300, SUN_0300 + 21 * h),
            ("0 0 29 2 *", SUN_0300, 1_835_395_200), // 2028-02-29
        ];
        for (expr, from, want) in cases {
            let c = Cron::parse(expr).unwrap();
            assert_eq!(c.next_after(at(from)), Some(at(want)), "{expr} from {from}");
        }
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(at(0)), None);
    }

    #[test]
    fn cron_parse_errors() {
        let bad = [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "outside 0-59"),
            ("* 24 * * *", "outside 0-23"),
            ("* * 0 * *", "outside 1-31"),
            ("*/0 * * * *", "positive"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
            ("* * * 13 *", "outside 1-12"),
        ];
        for (e, want) in bad {
            let err = Cron::parse(e).unwrap_err();
            assert!(err.contains(want), "{e}: {err}");
        }
    }

    #[test]
    fn interval_slots_are_epoch_aligned() {
        let s = Schedule::Every(Duration::from_secs(3));
        let ms = |m: u64| UNIX_EPOCH + Duration::from_millis(m);
        // (from, next)
        let cases = [(0, 3_000), (2_999, 3_000), (3_000, 6_000), (10_500, 12_000)];
        for (from, want) in cases {
            assert_eq!(s.next_after(ms(from)), Some(ms(want)), "{from}");
        }
    }

    #[test]
    fn config_rules() {
        assert!(from_config(Some(Duration::from_secs(1)), Some("* * * * *")).is_err());
        assert!(from_config(Some(Duration::from_millis(10)), None).is_err());
        assert_eq!(from_config(None, None), Ok(None));
        assert!(matches!(
            from_config(None, Some("0 3 * * *")),
            Ok(Some(Schedule::Cron(_)))
        ));
    }
}
