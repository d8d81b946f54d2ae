//! `[aws_agent_api]`: where the AWS-Secrets-Manager-Agent-compatible endpoint listens and how
//! it checks the SSRF token. The defaults are the agent's own, so an application configured for
//! the agent (same port, same token variable, same header) needs no change.

use crate::api::tcp_peer::loopback_addr;
use crate::secret::SecretText;
use serde::Deserialize;
use sidecred_core::duration::Dur;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsAgentApi {
    /// Loopback TCP address, e.g. "127.0.0.1:2773" (the agent's default port).
    #[serde(default)]
    pub listen: Option<String>,
    /// A Unix socket, checked like the other sockets (see Socket placement).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default = "default_mode")]
    pub socket_mode: String,
    /// Headers that may carry the token; the first value of the first one present counts.
    #[serde(default = "default_headers")]
    pub ssrf_headers: Vec<String>,
    /// Variables read, in order, for the token; a value `file://PATH` names a file holding it.
    #[serde(default = "default_env")]
    pub ssrf_env_variables: Vec<String>,
    /// Prefix of path-style requests (`GET /v1/NAME`).
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Lifetime of the session opened for each caller (default: `server.default_session_ttl`).
    #[serde(default)]
    pub session_ttl: Option<Dur>,
}

fn default_mode() -> String {
    "0660".into()
}
fn default_headers() -> Vec<String> {
    vec![
        "X-Aws-Parameters-Secrets-Token".into(),
        "X-Vault-Token".into(),
    ]
}
fn default_env() -> Vec<String> {
    vec![
        "AWS_TOKEN".into(),
        "AWS_SESSION_TOKEN".into(),
        "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
    ]
}
fn default_prefix() -> String {
    "/v1/".into()
}

/// Validated settings. The token itself is read when the endpoint starts, as the agent does.
#[derive(Clone, Debug)]
pub struct AwsAgentApiConfig {
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    pub ssrf_headers: Vec<String>,
    pub ssrf_env_variables: Vec<String>,
    pub path_prefix: String,
    pub session_ttl: Option<Duration>,
}

impl RawAwsAgentApi {
    /// Returns (key, message) on error.
    pub fn validate(self) -> Result<AwsAgentApiConfig, (&'static str, String)> {
        let listen = match self.listen.as_deref() {
            Some(s) => Some(loopback_addr(s).map_err(|m| ("aws_agent_api.listen", m))?),
            None => None,
        };
        if listen.is_none() && self.socket.is_none() {
            return Err((
                "aws_agent_api",
                "set `listen` (a loopback address such as 127.0.0.1:2773), `socket`, or both"
                    .into(),
            ));
        }
        if let Some(p) = &self.socket {
            if !p.is_absolute() {
                return Err(("aws_agent_api.socket", "must be an absolute path".into()));
            }
        }
        let socket_mode = u32::from_str_radix(&self.socket_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or((
                "aws_agent_api.socket_mode",
                format!(
                    "expected an octal mode such as \"0660\", got \"{}\"",
                    self.socket_mode
                ),
            ))?;
        if self.ssrf_headers.is_empty() {
            return Err(("aws_agent_api.ssrf_headers", "must not be empty".into()));
        }
        for h in &self.ssrf_headers {
            if http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((
                    "aws_agent_api.ssrf_headers",
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        if self.ssrf_env_variables.is_empty() {
            return Err((
                "aws_agent_api.ssrf_env_variables",
                "must not be empty".into(),
            ));
        }
        if !self.path_prefix.starts_with('/') || self.path_prefix == "/" {
            return Err((
                "aws_agent_api.path_prefix",
                "must begin with / and name a path, e.g. \"/v1/\"".into(),
            ));
        }
        if ["/ping", "/secretsmanager/get"].contains(&self.path_prefix.as_str()) {
            return Err((
                "aws_agent_api.path_prefix",
                "collides with a fixed route".into(),
            ));
        }
        Ok(AwsAgentApiConfig {
            listen,
            socket: self.socket,
            socket_mode,
            ssrf_headers: self
                .ssrf_headers
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ssrf_env_variables: self.ssrf_env_variables,
            path_prefix: self.path_prefix,
            session_ttl: self.session_ttl.map(|d| d.0),
        })
    }
}

impl AwsAgentApiConfig {
    /// Reads the SSRF token the agent's way: the first set variable of `ssrf_env_variables`;
    /// a value `file://PATH` is replaced by that file's content, trimmed. An empty token is
    /// refused (it would let any request through).
    pub fn read_token(&self) -> Result<SecretText, String> {
        let (var, val) = self
            .ssrf_env_variables
            .iter()
            .find_map(|n| std::env::var(n).ok().map(|v| (n, v)))
            .ok_or_else(|| {
                format!(
                    "aws_agent_api: none of {} is set; the SSRF token is read from the first \
                     one set (a value file://PATH reads it from PATH)",
                    self.ssrf_env_variables.join(", ")
                )
            })?;
        let token = match val.strip_prefix("file://") {
            None => SecretText::new(val),
            Some(path) => {
                let mut text = std::fs::read_to_string(path)
                    .map_err(|e| format!("aws_agent_api: {var} names {path}: {e}"))?;
                let t = SecretText::new(text.trim().to_string());
                zeroize::Zeroize::zeroize(&mut text);
                t
            }
        };
        if token.expose().is_empty() {
            return Err(format!("aws_agent_api: the SSRF token in {var} is empty"));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(listen: Option<&str>) -> RawAwsAgentApi {
        toml::from_str::<RawAwsAgentApi>(&match listen {
            Some(l) => format!("listen = \"{l}\""),
            None => String::new(),
        })
        .unwrap()
    }

    #[test]
    fn validate_table() {
        assert!(raw(Some("127.0.0.1:2773")).validate().is_ok());
        assert!(raw(Some("[::1]:2773")).validate().is_ok());
        for bad in [
            "0.0.0.0:2773",
            "192.168.1.1:2773",
            "[::]:1",
            "localhost:2773",
        ] {
            let e = raw(Some(bad)).validate().unwrap_err();
            assert_eq!(e.0, "aws_agent_api.listen", "{bad}");
        }
        assert_eq!(raw(None).validate().unwrap_err().0, "aws_agent_api");
        let mut r = raw(Some("127.0.0.1:1"));
        r.path_prefix = "v1/".into();
        assert_eq!(r.validate().unwrap_err().0, "aws_agent_api.path_prefix");
        let mut r = raw(Some("127.0.0.1:1"));
        r.ssrf_headers = vec!["bad header".into()];
        assert_eq!(r.validate().unwrap_err().0, "aws_agent_api.ssrf_headers");
        let mut r = raw(Some("127.0.0.1:1"));
        r.socket_mode = "999".into();
        assert_eq!(r.validate().unwrap_err().0, "aws_agent_api.socket_mode");
        assert!(toml::from_str::<RawAwsAgentApi>("lisen = \"x\"").is_err());
    }
}
