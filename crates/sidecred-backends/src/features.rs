//! Which backend kinds this build has. `openbao` and `aws` bring whole client stacks (vaultrs
//! and reqwest; the AWS SDK), so each sits behind a cargo feature of its own name, on by
//! default here and in `sidecred`; the dev backend and the CA are always in. A config naming a
//! kind the build left out is refused where it is read, with the feature to enable, instead of
//! as an unknown kind.

use super::{ca, dev, BackendConfig, SetupError};
#[cfg(not(all(feature = "openbao", feature = "aws")))]
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// The backend kinds behind a cargo feature, with that feature.
const OPTIONAL: [(&str, &str); 2] = [("openbao", "openbao"), ("aws", "aws")];

/// The cargo feature that brings backend kind `kind`; None for a kind that is always built in
/// (or no kind at all).
pub fn required_feature(kind: &str) -> Option<&'static str> {
    OPTIONAL.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}

/// The error a build without `kind`'s feature gives for a config naming `kind`; None for a
/// kind every build has.
pub fn left_out(kind: &str) -> Option<SetupError> {
    OPTIONAL
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|&(kind, feature)| SetupError::NotBuilt { kind, feature })
}

/// `[backends.NAME]` as written: a variant per kind this build has, and a placeholder (its
/// settings unread) per kind it left out, so that naming one can say which feature to enable.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Tagged {
    Dev(dev::DevConfig),
    #[cfg(feature = "openbao")]
    #[serde(rename = "openbao")]
    OpenBao(super::openbao::OpenBaoConfig),
    #[cfg(not(feature = "openbao"))]
    #[serde(rename = "openbao")]
    OpenBaoLeftOut(IgnoredAny),
    #[cfg(feature = "aws")]
    Aws(super::aws::AwsConfig),
    #[cfg(not(feature = "aws"))]
    #[serde(rename = "aws")]
    AwsLeftOut(IgnoredAny),
    Ca(ca::CaConfig),
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Tagged::deserialize(d)? {
            Tagged::Dev(c) => Ok(BackendConfig::Dev(c)),
            #[cfg(feature = "openbao")]
            Tagged::OpenBao(c) => Ok(BackendConfig::OpenBao(c)),
            #[cfg(not(feature = "openbao"))]
            Tagged::OpenBaoLeftOut(_) => Err(refuse("openbao")),
            #[cfg(feature = "aws")]
            Tagged::Aws(c) => Ok(BackendConfig::Aws(c)),
            #[cfg(not(feature = "aws"))]
            Tagged::AwsLeftOut(_) => Err(refuse("aws")),
            Tagged::Ca(c) => Ok(BackendConfig::Ca(c)),
        }
    }
}

/// A deserializer error carrying [`left_out`]'s message (TOML adds the table's position).
#[cfg(not(all(feature = "openbao", feature = "aws")))]
fn refuse<E: serde::de::Error>(kind: &str) -> E {
    match left_out(kind) {
        Some(e) => E::custom(e),
        None => E::custom(format!("backend kind `{kind}` is not in this build")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use toml::Spanned;

    /// Reads `[backends.*]` tables the way the config loader does (spans kept).
    fn read(text: &str) -> Result<BTreeMap<String, Spanned<BackendConfig>>, toml::de::Error> {
        #[derive(Deserialize)]
        struct Doc {
            backends: BTreeMap<String, Spanned<BackendConfig>>,
        }
        toml::from_str::<Doc>(text).map(|d| d.backends)
    }

    #[test]
    fn optional_kinds_name_their_feature_and_the_rest_none() {
        assert_eq!(required_feature("openbao"), Some("openbao"));
        assert_eq!(required_feature("aws"), Some("aws"));
        for kind in ["dev", "ca", "vault", ""] {
            assert_eq!(required_feature(kind), None, "{kind}");
            assert!(left_out(kind).is_none(), "{kind}");
        }
    }

    #[test]
    fn left_out_kind_error_names_the_kind_and_the_feature() {
        for kind in ["openbao", "aws"] {
            let shown = left_out(kind).expect("optional kind").to_string();
            assert!(shown.contains(&format!("backend kind `{kind}`")), "{shown}");
            assert!(
                shown.contains(&format!("cargo feature `{kind}`")),
                "{shown}"
            );
        }
    }

    #[test]
    fn always_built_kinds_read_in_every_build() {
        let b = read("[backends.d]\nkind = \"dev\"\n\n[backends.c]\nkind = \"ca\"\ntrust_domain = \"example.org\"\ngenerate = true\n")
            .expect("dev and ca read");
        assert_eq!(b["d"].get_ref().kind(), "dev");
        assert_eq!(b["c"].get_ref().kind(), "ca");
        // An unknown kind is still serde's own error, listing what is accepted.
        let e = read("[backends.x]\nkind = \"vault\"\n").unwrap_err();
        assert!(e.message().contains("unknown variant `vault`"), "{e}");
    }

    #[cfg(all(feature = "openbao", feature = "aws"))]
    #[test]
    fn full_build_reads_the_remote_kinds() {
        let b = read(
            "[backends.bao]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\n\
             auth = { method = \"token_file\", path = \"/run/t\" }\n\n[backends.sm]\nkind = \"aws\"\nregion = \"us-east-1\"\n",
        )
        .expect("openbao and aws read");
        assert_eq!(b["bao"].get_ref().kind(), "openbao");
        assert_eq!(b["sm"].get_ref().kind(), "aws");
    }

    /// Runs in the slim build `scripts/test` checks: the real loader path, with a position.
    #[cfg(not(any(feature = "openbao", feature = "aws")))]
    #[test]
    fn slim_build_refuses_remote_kinds_at_their_table() {
        for kind in ["openbao", "aws"] {
            let text = format!("[backends.d]\nkind = \"dev\"\n\n[backends.r]\nkind = \"{kind}\"\naddress = \"x\"\n");
            let e = read(&text).unwrap_err();
            let msg = e.message();
            assert!(
                msg.contains(&format!("backend kind `{kind}` is not in this build")),
                "{msg}"
            );
            assert!(msg.contains(&format!("cargo feature `{kind}`")), "{msg}");
            let at = e.span().expect("position").start;
            assert_eq!(
                text[..at].matches('\n').count() + 1,
                4,
                "at [backends.r]: {e}"
            );
        }
    }
}
