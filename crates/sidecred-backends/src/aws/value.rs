//! Value handling for rotation and reads: one key of a JSON secret, generated passwords,
//! and the optional verification command (value on stdin only, never argv or environment).
//! Error texts never quote the value.

use rand::seq::{IndexedRandom, SliceRandom};
use sidecred_secret::SecretBytes;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

/// Why a JSON secret cannot be read or updated. It names keys and positions, never content, so
/// it keeps no `serde_json` error as its source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value is JSON but not an object")]
    NotObject,
    #[error("value is not JSON (error at line {line} column {column})")]
    NotJson { line: usize, column: usize },
    #[error("JSON value has no key `{0}`")]
    NoKey(String),
    #[error("key `{0}` is not a string, number or boolean")]
    NotScalar(String),
    #[error("new value for key `{0}` is not UTF-8")]
    NotUtf8(String),
    #[error("cannot encode JSON")]
    Encode,
}

/// Why the verification command refused a new value. Its output is never read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot start `{prog}`: {source}")]
    Spawn {
        prog: String,
        source: std::io::Error,
    },
    #[error("`{prog}` did not finish within {timeout:?}")]
    Timeout { prog: String, timeout: Duration },
    #[error("`{prog}`: {source}")]
    Wait {
        prog: String,
        source: std::io::Error,
    },
    #[error("`{prog}` exited with {status}")]
    Refused {
        prog: String,
        status: std::process::ExitStatus,
    },
}

/// The top-level object of a JSON secret, or why it is not one (position only, no content).
fn object(doc: &SecretBytes) -> Result<serde_json::Map<String, serde_json::Value>, ValueError> {
    match serde_json::from_slice::<serde_json::Value>(doc.expose()) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(ValueError::NotObject),
        Err(e) => Err(ValueError::NotJson {
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// Wipes the strings of a parsed document before it is dropped.
fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(m) => m.values_mut().for_each(wipe),
        _ => {}
    }
}

/// One field of a JSON object: strings as their text, other scalars as their JSON form.
pub(super) fn select_key(doc: &SecretBytes, key: &str) -> Result<SecretBytes, ValueError> {
    let mut m = object(doc)?;
    let out = match m.get(key) {
        None => Err(ValueError::NoKey(key.to_string())),
        Some(serde_json::Value::String(s)) => Ok(SecretBytes::new(s.as_bytes().to_vec())),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(SecretBytes::new(v.to_string().into_bytes()))
        }
        Some(_) => Err(ValueError::NotScalar(key.to_string())),
    };
    m.values_mut().for_each(wipe);
    out
}

/// The document with `key` set to `value` (a string); the other keys are kept.
pub(super) fn replace_key(
    doc: &SecretBytes,
    key: &str,
    value: &SecretBytes,
) -> Result<SecretBytes, ValueError> {
    let mut m = object(doc)?;
    let text =
        std::str::from_utf8(value.expose()).map_err(|_| ValueError::NotUtf8(key.to_string()))?;
    if let Some(mut old) = m.insert(key.to_string(), text.to_string().into()) {
        wipe(&mut old);
    }
    let out = serde_json::to_vec(&m).map(SecretBytes::new);
    m.values_mut().for_each(wipe);
    out.map_err(|_| ValueError::Encode)
}

const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGIT: &str = "0123456789";
const SYMBOL: &str = "!#$%&()*+,-./:;<=>?@[]^_{|}~";

/// One character class of generated passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CharClass {
    Lower,
    Upper,
    Digit,
    Symbol,
}

impl CharClass {
    pub const ALL: [CharClass; 4] = [
        CharClass::Lower,
        CharClass::Upper,
        CharClass::Digit,
        CharClass::Symbol,
    ];

    fn chars(self) -> &'static str {
        match self {
            CharClass::Lower => LOWER,
            CharClass::Upper => UPPER,
            CharClass::Digit => DIGIT,
            CharClass::Symbol => SYMBOL,
        }
    }
}

/// Why password settings cannot produce a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorError {
    #[error("must be an integer from 8 to 4096")]
    Length,
    #[error("must name at least one class")]
    NoClass,
    #[error("removes every `{0:?}` character")]
    Excluded(CharClass),
}

/// Random passwords: `password_length` (default 32), `password_classes` (any of lower, upper,
/// digit, symbol; default all), `password_exclude` (characters never used). At least one
/// character of each class is included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generator {
    length: usize,
    classes: Vec<Vec<u8>>,
}

impl Generator {
    pub fn new(length: i64, classes: &[CharClass], exclude: &str) -> Result<Self, GeneratorError> {
        let length = usize::try_from(length)
            .ok()
            .filter(|n| (8..=4096).contains(n))
            .ok_or(GeneratorError::Length)?;
        if classes.is_empty() {
            return Err(GeneratorError::NoClass);
        }
        let mut sets = Vec::new();
        for c in classes {
            let chars: Vec<u8> = c
                .chars()
                .bytes()
                .filter(|b| !exclude.contains(*b as char))
                .collect();
            if chars.is_empty() {
                return Err(GeneratorError::Excluded(*c));
            }
            sets.push(chars);
        }
        Ok(Self {
            length,
            classes: sets,
        })
    }

    pub fn generate(&self) -> SecretBytes {
        let mut rng = rand::rng();
        let all: Vec<u8> = self.classes.concat();
        let mut out = Zeroizing::new(Vec::with_capacity(self.length));
        for c in &self.classes {
            out.push(*c.choose(&mut rng).expect("non-empty class"));
        }
        while out.len() < self.length {
            out.push(*all.choose(&mut rng).expect("non-empty alphabet"));
        }
        out.shuffle(&mut rng);
        SecretBytes::new(out.to_vec())
    }
}

/// `verify_command = ["prog", "arg"...]`, run before promotion with the new value on stdin;
/// exit 0 accepts it. Bounded by `verify_timeout` (default 10s); output is discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    argv: Vec<String>,
    timeout: Duration,
}

impl Verifier {
    /// None when `argv` is empty or names no program.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Option<Self> {
        (!argv.is_empty() && !argv[0].is_empty()).then_some(Self { argv, timeout })
    }

    /// Runs the command; the error says how it failed, never what it printed.
    pub async fn run(&self, value: &SecretBytes) -> Result<(), VerifyError> {
        let prog = self.argv[0].clone();
        let mut child = tokio::process::Command::new(&prog)
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VerifyError::Spawn {
                prog: prog.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        let run = async {
            // A command that exits without reading gives a broken pipe: its status decides.
            let _ = stdin.write_all(value.expose()).await;
            drop(stdin);
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => Err(VerifyError::Timeout {
                prog,
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(VerifyError::Wait { prog, source }),
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(status)) => Err(VerifyError::Refused { prog, status }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> SecretBytes {
        SecretBytes::new(s.as_bytes().to_vec())
    }

    #[test]
    fn key_selection_table() {
        let doc = b(r#"{"username":"app","password":"s3cr\"et","port":5432,"tls":true,"o":{}}"#);
        let cases = [
            ("username", Ok("app")),
            ("password", Ok("s3cr\"et")),
            ("port", Ok("5432")),
            ("tls", Ok("true")),
            ("o", Err(ValueError::NotScalar("o".into()))),
            ("nope", Err(ValueError::NoKey("nope".into()))),
        ];
        for (k, want) in cases {
            let got = select_key(&doc, k).map(|v| String::from_utf8(v.expose().to_vec()).unwrap());
            assert_eq!(got.as_deref().map_err(|e| e.clone()), want, "{k}");
        }
        let e = select_key(&b("hunter2-canary"), "password").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = select_key(&b(r#""hunter2-canary""#), "password").unwrap_err();
        assert_eq!(e, ValueError::NotObject);
    }

    #[test]
    fn replace_keeps_other_keys() {
        let doc = b(r#"{"username":"app","password":"old"}"#);
        let out = replace_key(&doc, "password", &b("new")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(out.expose()).unwrap();
        assert_eq!(v["username"], "app");
        assert_eq!(v["password"], "new");
        assert!(replace_key(&b("[1]"), "password", &b("x")).is_err());
    }

    #[test]
    fn generated_passwords_hold_every_class() {
        let all = Generator::new(32, &CharClass::ALL, "\"'\\").unwrap();
        for _ in 0..50 {
            let v = all.generate();
            let s = std::str::from_utf8(v.expose()).unwrap();
            assert_eq!(s.len(), 32);
            assert!(s.chars().any(|c| c.is_ascii_lowercase()));
            assert!(s.chars().any(|c| c.is_ascii_uppercase()));
            assert!(s.chars().any(|c| c.is_ascii_digit()));
            assert!(s.chars().any(|c| SYMBOL.contains(c)));
            assert!(!s.contains(['"', '\'', '\\']));
        }
        assert_eq!(
            Generator::new(7, &CharClass::ALL, ""),
            Err(GeneratorError::Length)
        );
        assert_eq!(
            Generator::new(-1, &CharClass::ALL, ""),
            Err(GeneratorError::Length)
        );
        assert_eq!(Generator::new(8, &[], ""), Err(GeneratorError::NoClass));
        assert_eq!(
            Generator::new(8, &[CharClass::Digit], DIGIT),
            Err(GeneratorError::Excluded(CharClass::Digit))
        );
    }

    #[tokio::test]
    async fn verifier_reads_stdin_and_reports_status_only() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = Verifier::new(
            argv(&["sh", "-c", "read v; test \"$v\" = canary-value"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(ok.run(&b("canary-value\n")).await.is_ok());
        let e = ok.run(&b("other-canary\n")).await.unwrap_err().to_string();
        assert!(e.contains("exited with") && !e.contains("canary"), "{e}");
        let slow = Verifier::new(argv(&["sleep", "5"]), Duration::from_millis(100)).unwrap();
        let e = slow.run(&b("x")).await.unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(Verifier::new(vec![], Duration::from_secs(1)).is_none());
        assert!(Verifier::new(argv(&[""]), Duration::from_secs(1)).is_none());
    }
}
