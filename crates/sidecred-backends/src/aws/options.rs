//! A secret's AWS options, compiled at config load: the staging label it reads, how a rotation
//! writes and generates the new value, and the command that verifies it before promotion.

use super::value::{CharClass, Generator, GeneratorError, Verifier};
use super::{AwsConfig, CURRENT};
use crate::options::{OptionError, RawOptions, SecretShape};
use serde::Deserialize;
use sidecred_core::duration::Dur;
use std::time::Duration;
use toml::Spanned;

/// A secret's AWS settings, from its `options`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsOptions {
    /// The staging label read and rotated (default AWSCURRENT).
    pub stage: String,
    /// Write rotated values as SecretBinary even when they are UTF-8.
    pub binary: bool,
    pub(super) generator: Generator,
    pub(super) verifier: Option<Verifier>,
}

/// `options` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of aws options")]
struct RawAwsOptions {
    #[serde(default)]
    stage: Option<Spanned<String>>,
    #[serde(default)]
    binary: bool,
    #[serde(default)]
    password_length: Option<Spanned<i64>>,
    #[serde(default)]
    password_classes: Option<Spanned<Vec<CharClass>>>,
    #[serde(default)]
    password_exclude: Option<Spanned<String>>,
    #[serde(default)]
    verify_command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    verify_timeout: Option<Spanned<Dur>>,
}

impl AwsConfig {
    /// Compiles one secret's options.
    pub fn prepare(
        &self,
        _secret: &SecretShape<'_>,
        raw: RawOptions<'_>,
    ) -> Result<AwsOptions, OptionError> {
        let r: RawAwsOptions = raw.decode()?;
        let generator = generator(&r)?;
        let stage = match r.stage {
            None => CURRENT.to_string(),
            Some(s) if s.get_ref().is_empty() || s.get_ref().len() > 256 => {
                return Err(OptionError::value(
                    "stage",
                    Some(s.span()),
                    "must be 1-256 characters",
                ))
            }
            Some(s) => s.into_inner(),
        };
        let verifier = match (r.verify_command, r.verify_timeout) {
            (None, None) => None,
            (None, Some(t)) => {
                return Err(OptionError::value(
                    "verify_timeout",
                    Some(t.span()),
                    "needs `verify_command`",
                ))
            }
            (Some(cmd), t) => {
                let span = cmd.span();
                let timeout = t
                    .map(|t| t.into_inner().0)
                    .unwrap_or(Duration::from_secs(10));
                Some(Verifier::new(cmd.into_inner(), timeout).ok_or_else(|| {
                    OptionError::value(
                        "verify_command",
                        Some(span),
                        "must be a non-empty list of strings (argv)",
                    )
                })?)
            }
        };
        Ok(AwsOptions {
            stage,
            binary: r.binary,
            generator,
            verifier,
        })
    }
}

/// The password generator, with each refusal pointed at the option that causes it.
fn generator(r: &RawAwsOptions) -> Result<Generator, OptionError> {
    let length = r
        .password_length
        .as_ref()
        .map(|l| *l.get_ref())
        .unwrap_or(32);
    let classes = r
        .password_classes
        .as_ref()
        .map(|c| c.get_ref().as_slice())
        .unwrap_or(&CharClass::ALL);
    let exclude = r.password_exclude.as_ref().map(|e| e.get_ref().as_str());
    Generator::new(length, classes, exclude.unwrap_or("")).map_err(|e| {
        let (key, span) = match &e {
            GeneratorError::Length => (
                "password_length",
                r.password_length.as_ref().map(|l| l.span()),
            ),
            GeneratorError::NoClass => (
                "password_classes",
                r.password_classes.as_ref().map(|c| c.span()),
            ),
            GeneratorError::Excluded(_) => (
                "password_exclude",
                r.password_exclude.as_ref().map(|x| x.span()),
            ),
        };
        OptionError::value(key, span, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_core::spec::Scope;

    fn prepare(text: &str) -> Result<AwsOptions, OptionError> {
        let shape = SecretShape {
            path: "app/s",
            scope: Scope::Shared,
        };
        AwsConfig::default().prepare(&shape, RawOptions::parse(text).unwrap())
    }

    #[test]
    fn defaults_and_values() {
        let o = prepare("{}").unwrap();
        assert_eq!(
            (o.stage.as_str(), o.binary, o.verifier.is_none()),
            ("AWSCURRENT", false, true)
        );
        assert_eq!(o.generator.generate().len(), 32);
        let absent = AwsConfig::default()
            .prepare(
                &SecretShape {
                    path: "p",
                    scope: Scope::Shared,
                },
                RawOptions::new(None),
            )
            .unwrap();
        assert_eq!(absent, o);
        let o = prepare(r#"{ stage = "blue", binary = true, password_length = 12, password_classes = ["digit"], password_exclude = "0123" }"#).unwrap();
        assert_eq!((o.stage.as_str(), o.binary), ("blue", true));
        let v = o.generator.generate();
        assert_eq!(v.len(), 12);
        assert!(v.expose().iter().all(|c| b"456789".contains(c)));
        let o = prepare(r#"{ verify_command = ["true"], verify_timeout = "3s" }"#).unwrap();
        assert_eq!(
            o.verifier,
            Verifier::new(vec!["true".into()], Duration::from_secs(3))
        );
    }

    /// Each refusal names its option and points at it (byte offsets into the text).
    #[test]
    fn refusals_point_at_the_option() {
        let cases = [
            ("{ stag = \"x\" }", "unknown field `stag`", 2),
            (
                "{ binary = \"yes\" }",
                "invalid type: string \"yes\", expected a boolean",
                11,
            ),
            (
                "{ stage = \"\" }",
                "option `stage`: must be 1-256 characters",
                10,
            ),
            (
                "{ password_length = 4 }",
                "option `password_length`: must be an integer from 8 to 4096",
                20,
            ),
            ("{ password_length = \"32\" }", "expected i64", 20),
            (
                "{ password_classes = [\"emoji\"] }",
                "unknown variant `emoji`",
                22,
            ),
            (
                "{ password_classes = [] }",
                "option `password_classes`: must name at least one class",
                21,
            ),
            (
                "{ password_classes = [\"digit\"], password_exclude = \"0123456789\" }",
                "option `password_exclude`: removes every `Digit` character",
                51,
            ),
            (
                "{ verify_command = [] }",
                "option `verify_command`: must be a non-empty list",
                19,
            ),
            ("{ verify_command = [\"\"] }", "option `verify_command`", 19),
            (
                "{ verify_timeout = \"1s\" }",
                "option `verify_timeout`: needs `verify_command`",
                19,
            ),
            (
                "{ verify_command = [\"x\"], verify_timeout = \"soon\" }",
                "invalid duration `soon`",
                43,
            ),
            ("3", "expected a table of options, found integer", 0),
        ];
        for (text, want, at) in cases {
            let e = prepare(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert_eq!(e.span().map(|s| s.start), Some(at), "{text}: {e}");
        }
    }
}
