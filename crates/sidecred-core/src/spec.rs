//! What a catalog entry is made of, and how a config problem is reported: the zone and scope
//! of a secret, and the positioned error every layer that checks config (backends compiling
//! their options, the policy, the fleet settings) returns. The TOML itself is read above, in
//! `sidecred::config`; these types are below everything that reads them.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which network boundary a secret serves; the router picks the backend by zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    Internal,
    External,
    Restricted,
}

impl Zone {
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Internal => "internal",
            Zone::External => "external",
            Zone::Restricted => "restricted",
        }
    }
}

/// Who may share a cached value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One value for every session (static secrets, KV).
    #[default]
    Shared,
    /// A value per session (dynamic credentials).
    Session,
    /// A value per call id; requires a call id on GetSecret.
    Call,
}

/// A config problem with its position, printed as `file:line:col: key: message`.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    /// The whole explanation, the source's text included.
    pub message: String,
    /// The typed error underneath (an option, a backend setting, a file), when there is one.
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Builds errors that point into one document: `text` is the config text the spans index.
pub struct Locator<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn at(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = if span.start == 0 && span.end == 0 {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: msg.into(),
            source: None,
        }
    }

    /// An error at `span` whose message is `source`'s, kept as its source.
    pub fn caused(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ConfigError {
        let mut e = self.at(span, key, source.to_string());
        e.source = Some(Arc::new(source));
        e
    }
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// A path of plain segments: letters, digits, `-`, `_`, `.`; no empty, `.` or `..` segment.
/// Shared by every config key that names a KV path or mount, so none can climb out of its tree.
pub fn check_segments(what: &str, p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{p}`: expected path segments of letters, digits, `-`, `_` or `.`"
        ))
    }
}
