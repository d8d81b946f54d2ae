//! DNS names in certificates. A name must be a valid host name (LDH labels of 1-63 bytes, at
//! most 253 bytes); a rule's `dns_sans` patterns match label by label, so `*` stays inside the
//! one label its author wrote it in and never matches `*`, `.`, NUL or an empty label. A name
//! that is itself a wildcard (`*.svc.local`) is issued only where `wildcard_dns_sans` lists it.

/// Longest DNS name in presentation form, without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

fn ldh(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

fn check_label(l: &str) -> Result<(), String> {
    let b = l.as_bytes();
    if b.is_empty() {
        return Err("empty label".into());
    }
    if b.len() > MAX_LABEL {
        return Err(format!("label of {} bytes (limit {MAX_LABEL})", b.len()));
    }
    if let Some(c) = l.chars().find(|c| !c.is_ascii() || !ldh(*c as u8)) {
        return Err(format!("{c:?} in a label (letters, digits and `-` only)"));
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("a label starts or ends with `-`".into());
    }
    Ok(())
}

/// Whether `name` is a host name a certificate may carry (no wildcard).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("1 to {MAX_NAME} bytes"));
    }
    name.split('.').try_for_each(check_label)
}

/// Whether `name` is `*.` followed by a host name of at least two labels.
pub fn check_wildcard(name: &str) -> Result<(), String> {
    let rest = name
        .strip_prefix("*.")
        .ok_or("a wildcard name starts with `*.`")?;
    check_name(rest)?;
    if !rest.contains('.') {
        return Err("a wildcard needs at least two labels after `*.`".into());
    }
    Ok(())
}

/// Whether a rule's `dns_sans` pattern is well formed: host-name labels in which `*` (any run
/// of letters, digits and `-`) and `?` (one of them) may appear.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_NAME {
        return Err(format!("1 to {MAX_NAME} bytes"));
    }
    for l in p.split('.') {
        if l.is_empty() {
            return Err("empty label".into());
        }
        if let Some(c) = l
            .chars()
            .find(|c| !c.is_ascii() || !(ldh(*c as u8) || *c == '*' || *c == '?'))
        {
            return Err(format!("{c:?} in a label"));
        }
    }
    Ok(())
}

/// One label against one pattern label (ASCII, case already folded).
fn label_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'?') => {
                pi += 1;
                ti += 1;
            }
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Whether the rule pattern `pattern` admits the requested non-wildcard name `name`: the same
/// number of labels, each matching its pattern label. `name` must be a valid host name.
pub fn pattern_match(pattern: &str, name: &str) -> bool {
    if check_name(name).is_err() {
        return false;
    }
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let (mut ps, mut ns) = (p.split('.'), n.split('.'));
    loop {
        match (ps.next(), ns.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if label_match(a.as_bytes(), b.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// Whether a pattern is a literal name (no `*` or `?`): what a SPIFFE certificate may carry.
pub fn is_literal(p: &str) -> bool {
    !p.contains(['*', '?']) && check_name(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_stay_inside_their_labels() {
        let cases = [
            ("*.svc.local", "a.svc.local", true),
            ("*.svc.local", "API.svc.local", true),
            ("*.SVC.local", "api.svc.local", true),
            ("*.svc.local", "a.b.svc.local", false),
            ("*.svc.local", "*.svc.local", false),
            ("*.svc.local", "a\0.svc.local", false),
            ("*.svc.local", ".svc.local", false),
            ("*.svc.local", "svc.local", false),
            ("*.svc.local", "a..svc.local", false),
            ("*.svc.local", "a.svc.local.", false),
            ("*.svc.local", "a_b.svc.local", false),
            ("*.svc.local", "-a.svc.local", false),
            ("*.svc.local", "a.svc.local.evil.com", false),
            ("*.svc.local", "a/b.svc.local", false),
            ("*.svc.local", "é.svc.local", false),
            ("web-*.svc.local", "web-1.svc.local", true),
            ("web-*.svc.local", "web-.svc.local", false),
            ("web-?.svc.local", "web-1.svc.local", true),
            ("web-?.svc.local", "web-12.svc.local", false),
            ("web-?.svc.local", "web-?.svc.local", false),
            ("*", "localhost", true),
            ("*", "a.b", false),
            ("localhost", "localhost", true),
            ("localhost", "localhost2", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(pattern_match(p, n), want, "{p:?} ~ {n:?}");
        }
        let long_label = format!("{}.svc.local", "a".repeat(64));
        assert!(!pattern_match("*.svc.local", &long_label));
        let long_name = format!("{}.svc.local", ["a"; 130].join("."));
        assert!(!pattern_match("*", &long_name));
    }

    #[test]
    fn syntax() {
        for ok in ["a.svc.local", "localhost", "x-1.example.com"] {
            assert!(check_name(ok).is_ok(), "{ok}");
            assert!(is_literal(ok), "{ok}");
        }
        for bad in ["", "*.a.b", "a..b", "a b", "a\0b", ".a", "a.", "a_b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(!is_literal(bad), "{bad:?}");
        }
        assert!(check_wildcard("*.svc.local").is_ok());
        for bad in ["*.local", "a.svc.local", "**.svc.local", "*.*.local", "*"] {
            assert!(check_wildcard(bad).is_err(), "{bad:?}");
        }
        assert!(check_pattern("*.svc.local").is_ok());
        assert!(check_pattern("web-?.svc.local").is_ok());
        for bad in ["", "a..b", "a b", "a\0b", "a/b", "[a].b"] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
