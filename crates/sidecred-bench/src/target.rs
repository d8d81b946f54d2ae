//! What `sidecred-bench run` measures: the targets named on the command line.

use crate::tls::TlsTarget;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub enum Target {
    Sidecred {
        socket: PathBuf,
        secret: String,
        /// Label only: this sidecred writes an audit log.
        audit: bool,
    },
    Echo {
        socket: PathBuf,
    },
    HttpUnix {
        socket: PathBuf,
        path: String,
        header: Option<String>,
        name: &'static str,
    },
    HttpTcp {
        addr: String,
        path: String,
        header: Option<String>,
        /// Label only: sidecred's AWS-agent-compatible endpoint rather than the agent.
        sidecred: bool,
        /// A label of its own (`labelled-tcp=`), e.g. one leg of the proxy comparison.
        label: Option<&'static str>,
    },
    /// HTTP/1.1 keep-alive over TLS, directly or through a proxy's `CONNECT` tunnel.
    Tls(TlsTarget),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let (kind, rest) = s
            .split_once('=')
            .ok_or(format!("target `{s}`: expected KIND=..."))?;
        let parts: Vec<&str> = rest.splitn(3, ',').collect();
        let need = |i: usize| {
            parts
                .get(i)
                .map(|s| s.to_string())
                .ok_or(format!("target `{s}`: missing field {i}"))
        };
        Ok(match kind {
            "sidecred" => Target::Sidecred {
                socket: need(0)?.into(),
                secret: need(1)?,
                audit: parts.get(2) == Some(&"audit"),
            },
            "echo" => Target::Echo {
                socket: need(0)?.into(),
            },
            "http-unix" | "vault-unix" => Target::HttpUnix {
                socket: need(0)?.into(),
                path: need(1)?,
                header: parts.get(2).map(|s| s.to_string()),
                name: if kind == "vault-unix" {
                    "sidecred Vault API (HTTP/UDS)"
                } else {
                    "bao proxy cached (HTTP/UDS)"
                },
            },
            "http-tcp" | "sidecred-http-tcp" => Target::HttpTcp {
                addr: need(0)?,
                path: need(1)?,
                header: parts.get(2).map(|s| s.to_string()),
                sidecred: kind == "sidecred-http-tcp",
                label: None,
            },
            "labelled-tcp" => {
                // LABEL,HOST:PORT,PATH[,H:V]: the label is leaked once per target (a CLI tool).
                let (label, rest) = rest
                    .split_once(',')
                    .ok_or(format!("target `{s}`: expected LABEL,HOST:PORT,PATH[,H:V]"))?;
                let parts: Vec<&str> = rest.splitn(3, ',').collect();
                if parts.len() < 2 {
                    return Err(format!("target `{s}`: expected LABEL,HOST:PORT,PATH[,H:V]"));
                }
                Target::HttpTcp {
                    addr: parts[0].to_string(),
                    path: parts[1].to_string(),
                    header: parts.get(2).map(|s| s.to_string()),
                    sidecred: false,
                    label: Some(Box::leak(label.to_string().into_boxed_str())),
                }
            }
            "tls-tcp" | "connect-tls" => Target::Tls(TlsTarget::parse(kind, rest)?),
            k => return Err(format!("unknown target kind `{k}`")),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Target::Sidecred { audit: true, .. } => "sidecred GetSecret, audit on",
            Target::Sidecred { .. } => "sidecred GetSecret (gRPC/UDS)",
            Target::Echo { .. } => "bare tonic echo (gRPC/UDS)",
            Target::HttpUnix { name, .. } => name,
            Target::HttpTcp { label: Some(l), .. } => l,
            Target::HttpTcp { sidecred: true, .. } => "sidecred AWS agent API (HTTP/TCP)",
            Target::HttpTcp { .. } => "AWS SM Agent cached (HTTP/TCP)",
            Target::Tls(t) => t.label,
        }
    }
}
