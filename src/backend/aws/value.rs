//! Value handling for rotation and reads: one key of a JSON secret, generated passwords,
//! and the optional verification command (value on stdin only, never argv or environment).
//! Error texts never quote the value.

use crate::secret::SecretBytes;
use rand::seq::{IndexedRandom, SliceRandom};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

/// The top-level object of a JSON secret, or why it is not one (position only, no content).
fn object(doc: &SecretBytes) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<serde_json::Value>(doc.expose()) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("value is JSON but not an object".into()),
        Err(e) => Err(format!(
            "value is not JSON (error at line {} column {})",
            e.line(),
            e.column()
        )),
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
pub(super) fn select_key(doc: &SecretBytes, key: &str) -> Result<SecretBytes, String> {
    let mut m = object(doc)?;
    let out = match m.get(key) {
        None => Err(format!("JSON value has no key `{key}`")),
        Some(serde_json::Value::String(s)) => Ok(SecretBytes::new(s.as_bytes().to_vec())),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(SecretBytes::new(v.to_string().into_bytes()))
        }
        Some(_) => Err(format!("key `{key}` is not a string, number or boolean")),
    };
    m.values_mut().for_each(wipe);
    out
}

/// The document with `key` set to `value` (a string); the other keys are kept.
pub(super) fn replace_key(
    doc: &SecretBytes,
    key: &str,
    value: &SecretBytes,
) -> Result<SecretBytes, String> {
    let mut m = object(doc)?;
    let text = std::str::from_utf8(value.expose())
        .map_err(|_| format!("new value for key `{key}` is not UTF-8"))?;
    if let Some(mut old) = m.insert(key.to_string(), text.to_string().into()) {
        wipe(&mut old);
    }
    let out = serde_json::to_vec(&m).map(SecretBytes::new);
    m.values_mut().for_each(wipe);
    out.map_err(|_| "cannot encode JSON".into())
}

const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGIT: &str = "0123456789";
const SYMBOL: &str = "!#$%&()*+,-./:;<=>?@[]^_{|}~";

/// Random passwords: `password_length` (default 32), `password_classes` (any of lower, upper,
/// digit, symbol; default all), `password_exclude` (characters never used). At least one
/// character of each class is included.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Generator {
    length: usize,
    classes: Vec<Vec<u8>>,
}

impl Generator {
    pub fn from_options(o: &toml::Table) -> Result<Self, String> {
        let length = match o.get("password_length") {
            None => 32,
            Some(v) => v
                .as_integer()
                .filter(|n| (8..=4096).contains(n))
                .ok_or("option `password_length` must be an integer from 8 to 4096")?
                as usize,
        };
        let names: Vec<String> = match o.get("password_classes") {
            None => ["lower", "upper", "digit", "symbol"]
                .map(String::from)
                .to_vec(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
                .ok_or("option `password_classes` must be a list of strings")?,
        };
        let exclude = match o.get("password_exclude") {
            None => "",
            Some(v) => v
                .as_str()
                .ok_or("option `password_exclude` must be a string")?,
        };
        let mut classes = Vec::new();
        for n in &names {
            let set = match n.as_str() {
                "lower" => LOWER,
                "upper" => UPPER,
                "digit" => DIGIT,
                "symbol" => SYMBOL,
                _ => {
                    return Err(format!(
                    "option `password_classes`: unknown class `{n}` (lower, upper, digit, symbol)"
                ))
                }
            };
            let chars: Vec<u8> = set
                .bytes()
                .filter(|c| !exclude.contains(*c as char))
                .collect();
            if chars.is_empty() {
                return Err(format!(
                    "option `password_exclude` removes every `{n}` character"
                ));
            }
            classes.push(chars);
        }
        if classes.is_empty() {
            return Err("option `password_classes` must name at least one class".into());
        }
        Ok(Self { length, classes })
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
pub(super) struct Verifier {
    argv: Vec<String>,
    timeout: Duration,
}

impl Verifier {
    pub fn from_options(o: &toml::Table) -> Result<Option<Self>, String> {
        let Some(v) = o.get("verify_command") else {
            if o.contains_key("verify_timeout") {
                return Err("option `verify_timeout` needs `verify_command`".into());
            }
            return Ok(None);
        };
        let argv: Vec<String> = v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
            .filter(|a: &Vec<String>| !a.is_empty() && !a[0].is_empty())
            .ok_or("option `verify_command` must be a non-empty list of strings (argv)")?;
        let timeout = match o.get("verify_timeout") {
            None => Duration::from_secs(10),
            Some(t) => t
                .as_str()
                .ok_or_else(|| "option `verify_timeout` must be a duration string".to_string())
                .and_then(crate::config::parse_duration)?,
        };
        Ok(Some(Self { argv, timeout }))
    }

    /// Runs the command; the error says how it failed, never what it printed.
    pub async fn run(&self, value: &SecretBytes) -> Result<(), String> {
        let prog = &self.argv[0];
        let mut child = tokio::process::Command::new(prog)
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let run = async {
            // A command that exits without reading gives a broken pipe: its status decides.
            let _ = stdin.write_all(value.expose()).await;
            drop(stdin);
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => Err(format!("`{prog}` did not finish within {:?}", self.timeout)),
            Ok(Err(e)) => Err(format!("`{prog}`: {e}")),
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!("`{prog}` exited with {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> SecretBytes {
        SecretBytes::new(s.as_bytes().to_vec())
    }

    fn opts(t: &str) -> toml::Table {
        toml::from_str(t).unwrap()
    }

    #[test]
    fn key_selection_table() {
        let doc = b(r#"{"username":"app","password":"s3cr\"et","port":5432,"tls":true,"o":{}}"#);
        let cases = [
            ("username", Ok("app")),
            ("password", Ok("s3cr\"et")),
            ("port", Ok("5432")),
            ("tls", Ok("true")),
            ("o", Err("key `o` is not a string, number or boolean")),
            ("nope", Err("JSON value has no key `nope`")),
        ];
        for (k, want) in cases {
            let got = select_key(&doc, k).map(|v| String::from_utf8(v.expose().to_vec()).unwrap());
            assert_eq!(got.as_deref().map_err(|e| e.as_str()), want, "{k}");
        }
        let e = select_key(&b("hunter2-canary"), "password").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = select_key(&b(r#""hunter2-canary""#), "password").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
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
    fn generator_options_table() {
        let g = Generator::from_options(&opts(
            "password_length = 12\npassword_classes = [\"digit\"]\npassword_exclude = \"0123\"",
        ))
        .unwrap();
        for _ in 0..50 {
            let v = g.generate();
            assert_eq!(v.len(), 12);
            assert!(v.expose().iter().all(|c| b"456789".contains(c)));
        }
        let all = Generator::from_options(&opts("password_exclude = \"\\\"'\\\\\"")).unwrap();
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
        for bad in [
            "password_length = 4",
            "password_length = \"32\"",
            "password_classes = [\"emoji\"]",
            "password_classes = []",
            "password_classes = [\"digit\"]\npassword_exclude = \"0123456789\"",
        ] {
            assert!(Generator::from_options(&opts(bad)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn verifier_reads_stdin_and_reports_status_only() {
        let ok = Verifier::from_options(&opts(
            "verify_command = [\"sh\", \"-c\", \"read v; test \\\"$v\\\" = canary-value\"]",
        ))
        .unwrap()
        .unwrap();
        assert!(ok.run(&b("canary-value\n")).await.is_ok());
        let e = ok.run(&b("other-canary\n")).await.unwrap_err();
        assert!(e.contains("exited with") && !e.contains("canary"), "{e}");
        let slow = Verifier::from_options(&opts(
            "verify_command = [\"sleep\", \"5\"]\nverify_timeout = \"100ms\"",
        ))
        .unwrap()
        .unwrap();
        assert!(slow
            .run(&b("x"))
            .await
            .unwrap_err()
            .contains("did not finish"));
        assert!(Verifier::from_options(&opts("verify_command = []")).is_err());
        assert!(Verifier::from_options(&opts("verify_timeout = \"1s\"")).is_err());
    }
}
