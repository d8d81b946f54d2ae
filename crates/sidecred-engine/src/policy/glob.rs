//! Minimal glob: `*` matches any run of characters, `?` one character. Nothing else is special.

pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Byte-wise with backtracking to the last `*`; no allocation (this runs on every request).
    // `?` matches one character: skip a whole UTF-8 sequence.
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let char_len = |b: u8| match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti += char_len(t[ti]).min(t.len() - ti);
        } else if pi < p.len() && p[pi] == t[ti] && p[pi] != b'*' {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            let next = st + char_len(t[st]).min(t.len() - st);
            pi = sp + 1;
            ti = next;
            star = Some((sp, next));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn table() {
        let cases = [
            ("*", "anything", true),
            ("tools/*", "tools/github", true),
            ("tools/*", "db/main", false),
            ("db-?", "db-1", true),
            ("db-?", "db-12", false),
            ("*-token", "gh-token", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("/usr/bin/*", "/usr/bin/python3", true),
            ("caf?", "café", true),
            ("*é", "café", true),
            ("a*", "", false),
            ("**", "x", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }
}
