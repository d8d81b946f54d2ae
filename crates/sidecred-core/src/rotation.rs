//! Rotation state per secret: the current version, and the previous one while its grace window is open.
//! Pure: every function takes `now`.

use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    pub version: String,
    pub retires_at: SystemTime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationState {
    pub current: Option<String>,
    pub previous: Option<Previous>,
}

/// What a rotation leaves behind: versions that must be retired at the backend right away.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub retire_now: Vec<String>,
}

impl RotationState {
    /// Records a rotation to `new` from `old` at `now` with `grace`. A still-open grace window of an
    /// earlier rotation closes at once: only one previous version is valid at a time.
    pub fn apply(
        &mut self,
        old: Option<String>,
        new: String,
        now: SystemTime,
        grace: Duration,
    ) -> Applied {
        self.apply_until(old, new, now, now + grace)
    }

    /// Like `apply`, with the window's end given (a rotation another sidecar made, or one
    /// replayed from the journal). A window already over retires `old` at once.
    pub fn apply_until(
        &mut self,
        old: Option<String>,
        new: String,
        now: SystemTime,
        retires_at: SystemTime,
    ) -> Applied {
        let mut retire_now = Vec::new();
        if let Some(p) = self.previous.take() {
            if Some(&p.version) != old.as_ref() {
                retire_now.push(p.version);
            }
        }
        self.previous = match old {
            Some(v) if retires_at <= now => {
                retire_now.push(v);
                None
            }
            Some(v) => Some(Previous {
                version: v,
                retires_at,
            }),
            None => None,
        };
        self.current = Some(new);
        Applied { retire_now }
    }

    /// The previous version if it is still valid at `now`.
    pub fn previous_valid(&self, now: SystemTime) -> Option<&Previous> {
        self.previous.as_ref().filter(|p| now < p.retires_at)
    }

    /// Takes the previous version out once its window has closed; the caller retires it.
    pub fn take_expired(&mut self, now: SystemTime) -> Option<String> {
        if self.previous.as_ref().is_some_and(|p| now >= p.retires_at) {
            return self.previous.take().map(|p| p.version);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn grace_window_table() {
        let mut st = RotationState::default();
        let a = st.apply(
            Some("1".into()),
            "2".into(),
            t(100),
            Duration::from_secs(30),
        );
        assert!(a.retire_now.is_empty());
        // (now, previous valid?, expired taken?)
        let cases = [(100, true), (129, true), (130, false), (500, false)];
        for (now, valid) in cases {
            assert_eq!(st.previous_valid(t(now)).is_some(), valid, "at {now}");
        }
        assert_eq!(st.take_expired(t(129)), None);
        assert_eq!(st.take_expired(t(130)), Some("1".into()));
        assert_eq!(st.take_expired(t(131)), None);
        assert_eq!(st.current.as_deref(), Some("2"));
    }

    #[test]
    fn second_rotation_inside_grace_retires_the_oldest() {
        let mut st = RotationState::default();
        st.apply(Some("1".into()), "2".into(), t(0), Duration::from_secs(60));
        let a = st.apply(Some("2".into()), "3".into(), t(10), Duration::from_secs(60));
        assert_eq!(a.retire_now, vec!["1".to_string()]);
        assert_eq!(st.previous_valid(t(10)).unwrap().version, "2");
        assert_eq!(st.previous_valid(t(10)).unwrap().retires_at, t(70));
    }

    #[test]
    fn zero_grace_retires_immediately() {
        let mut st = RotationState::default();
        let a = st.apply(Some("1".into()), "2".into(), t(0), Duration::ZERO);
        assert_eq!(a.retire_now, vec!["1".to_string()]);
        assert!(st.previous_valid(t(0)).is_none());
    }

    #[test]
    fn explicit_window_end_table() {
        // (retires_at, now, previous kept?, retired at once)
        let cases = [
            (50, 10, true, vec![]),
            (10, 10, false, vec!["1"]),
            (5, 10, false, vec!["1"]),
        ];
        for (end, now, kept, retired) in cases {
            let mut st = RotationState::default();
            let a = st.apply_until(Some("1".into()), "2".into(), t(now), t(end));
            assert_eq!(st.previous.is_some(), kept, "end {end}");
            assert_eq!(a.retire_now, retired, "end {end}");
        }
    }

    #[test]
    fn first_version_has_no_previous() {
        let mut st = RotationState::default();
        let a = st.apply(None, "1".into(), t(0), Duration::from_secs(5));
        assert!(a.retire_now.is_empty());
        assert!(st.previous.is_none());
    }
}
