//! Per-secret backend options, compiled once at config load.
//!
//! Each backend's `prepare` turns the TOML under `[[secret]] options` into a typed value, so a
//! typo or a wrong type is a config error with its line and column, and `fetch` never sees TOML.

use serde::de::DeserializeOwned;
use sidecred_core::spec::Scope;
use std::ops::Range;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// A secret's options in typed form, one variant per backend kind.
#[derive(Clone, Debug)]
pub enum CompiledOptions {
    Dev(super::dev::DevOptions),
    #[cfg(feature = "openbao")]
    OpenBao(super::openbao::Opts),
    #[cfg(feature = "aws")]
    Aws(super::aws::AwsOptions),
    Ca(super::ca::CaOptions),
}

impl CompiledOptions {
    /// The backend kind these options were compiled for.
    pub fn kind(&self) -> &'static str {
        match self {
            CompiledOptions::Dev(_) => "dev",
            #[cfg(feature = "openbao")]
            CompiledOptions::OpenBao(_) => "openbao",
            #[cfg(feature = "aws")]
            CompiledOptions::Aws(_) => "aws",
            CompiledOptions::Ca(_) => "ca",
        }
    }

    /// The error a backend returns when handed a spec compiled for another kind (a catalog
    /// built from two configs); never a panic.
    pub fn mismatch(&self, secret: &str, want: &str) -> super::BackendError {
        super::BackendError::Internal(format!(
            "`{secret}`: options compiled for a `{}` backend, not `{want}`",
            self.kind()
        ))
    }
}

/// The parts of a catalog entry, besides its options, that options are checked against.
#[derive(Clone, Copy, Debug)]
pub struct SecretShape<'a> {
    pub path: &'a str,
    pub scope: Scope,
}

/// A secret's options as written: the TOML value with its position in the config text.
pub struct RawOptions<'a> {
    value: Option<Spanned<DeValue<'a>>>,
}

impl<'a> RawOptions<'a> {
    /// `value` is the `options` entry of one `[[secret]]`, None when it has none.
    pub fn new(value: Option<Spanned<DeValue<'a>>>) -> Self {
        Self { value }
    }

    /// One TOML value (an inline table) on its own; positions are offsets into `text`.
    pub fn parse(text: &'a str) -> Result<Self, OptionError> {
        DeValue::parse(text)
            .map(|v| Self { value: Some(v) })
            .map_err(OptionError::shape)
    }

    /// Where the options sit in the config text (for errors about a missing key).
    pub fn span(&self) -> Option<Range<usize>> {
        self.value.as_ref().map(|v| v.span())
    }

    /// Deserializes into a backend's option struct; absent options are an empty table.
    /// Only a table is options: serde would read an array positionally.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, OptionError> {
        match self.value {
            Some(v) if !v.get_ref().is_table() => Err(OptionError::NotTable {
                span: v.span(),
                found: v.get_ref().type_str(),
            }),
            Some(v) => T::deserialize(ValueDeserializer::from(v)).map_err(OptionError::shape),
            None => {
                let empty = DeValue::parse("{}").map_err(OptionError::shape)?;
                // A position in the stand-in table would point nowhere in the config.
                T::deserialize(ValueDeserializer::from(empty))
                    .map_err(|source| OptionError::Shape { source, span: None })
            }
        }
    }
}

/// Which field of the secret, besides `options`, a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretField {
    Path,
    Scope,
}

impl SecretField {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretField::Path => "path",
            SecretField::Scope => "scope",
        }
    }
}

/// Why a secret's options do not compile. Positions are byte ranges into the config text.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// An unknown key, a wrong type or an unknown value: TOML's own error, with its position.
    #[error("{}", .source.message().trim_end())]
    Shape {
        source: toml::de::Error,
        span: Option<Range<usize>>,
    },
    /// `options` is not a table.
    #[error("expected a table of options, found {found}")]
    NotTable {
        span: Range<usize>,
        found: &'static str,
    },
    /// A value of the right type that the backend refuses.
    #[error("option `{key}`: {message}")]
    Value {
        key: &'static str,
        span: Option<Range<usize>>,
        message: String,
    },
    /// Options that do not fit the secret's path or scope.
    #[error("{message}")]
    Secret { field: SecretField, message: String },
}

impl OptionError {
    fn shape(source: toml::de::Error) -> Self {
        let span = source.span();
        OptionError::Shape { source, span }
    }

    pub fn value(
        key: &'static str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        OptionError::Value {
            key,
            span,
            message: message.into(),
        }
    }

    pub fn secret(field: SecretField, message: impl Into<String>) -> Self {
        OptionError::Secret {
            field,
            message: message.into(),
        }
    }

    /// Where in the config text the problem is, when it is inside `options`.
    pub fn span(&self) -> Option<Range<usize>> {
        match self {
            OptionError::Shape { span, .. } | OptionError::Value { span, .. } => span.clone(),
            OptionError::NotTable { span, .. } => Some(span.clone()),
            OptionError::Secret { .. } => None,
        }
    }
}
