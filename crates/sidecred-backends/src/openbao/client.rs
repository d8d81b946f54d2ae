//! One HTTP stack to OpenBao: vaultrs endpoints where they fit, raw JSON calls (same reqwest
//! client, same TLS roots and timeout) for what vaultrs hides, such as lease envelopes.
//! Every failure becomes a [`BackendError`] that names the path, never a value or a token.

use crate::{BackendError, SetupError};
use serde_json::Value;
use std::time::Duration;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroize;

/// The shared connection to one OpenBao server.
pub struct Bao {
    base: String,
    http: reqwest::Client,
    settings: vaultrs::client::VaultClientSettings,
    /// The backend's default namespace, used when a secret sets none.
    pub namespace: Option<String>,
}

/// A decoded API response: the envelope fields sidecred uses.
pub struct Reply {
    pub data: Value,
    pub lease_id: String,
    pub lease_duration: u64,
    pub renewable: bool,
}

impl Drop for Reply {
    fn drop(&mut self) {
        wipe(&mut self.data);
    }
}

/// Overwrites every string in a JSON value (values pass through serde_json on their way in).
pub fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe),
        Value::Object(m) => m.values_mut().for_each(wipe),
        _ => {}
    }
}

impl Bao {
    pub fn new(
        address: &str,
        ca_file: Option<&str>,
        namespace: Option<String>,
        timeout: Duration,
    ) -> Result<Bao, SetupError> {
        let mut b = VaultClientSettingsBuilder::default();
        // The builder's address setter panics on a bad URL; check first.
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(SetupError::setting(
                "address",
                format!("`{address}` must start with http:// or https://"),
            ));
        }
        b.address(address).timeout(Some(timeout)).verify(true);
        b.token(String::new());
        b.ca_certs(ca_file.map(|c| vec![c.to_string()]).unwrap_or_default());
        let settings = b.build().map_err(|e| SetupError::HttpClient {
            what: format!("address `{address}`: {e}"),
            source: Box::new(e),
        })?;
        let client = VaultClient::new(settings.clone()).map_err(|e| {
            let what = match &e {
                ClientError::FileReadError { path, source } => {
                    format!("ca_file `{path}`: {source}")
                }
                ClientError::ParseCertificateError { path, .. } => {
                    format!("ca_file `{path}`: not a PEM certificate bundle")
                }
                other => format!("cannot build the HTTP client: {other}"),
            };
            SetupError::HttpClient {
                what,
                source: Box::new(e),
            }
        })?;
        Ok(Bao {
            base: address.trim_end_matches('/').to_string(),
            http: client.http.http.clone(),
            settings,
            namespace,
        })
    }

    /// A vaultrs client for one call with this token and namespace; shares the connection pool.
    pub fn vault(&self, token: &str, namespace: Option<&str>) -> ScopedClient {
        ScopedClient(VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.base, self.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_string(),
                version: "v1".into(),
                wrap: None,
                namespace: namespace.or(self.namespace.as_deref()).map(str::to_string),
            },
            settings: self.settings.clone(),
        })
    }

    /// A raw call to `/v1/{path}`; `body` is JSON. Returns the envelope of a 200, or None on 204.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> Result<Option<Reply>, BackendError> {
        let url = format!("{}/v1/{}", self.base, path.trim_start_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Request", "true");
        if !token.is_empty() {
            // Sensitive: kept out of any header dump the HTTP stack may log.
            let mut v = reqwest::header::HeaderValue::from_str(token).map_err(|_| {
                BackendError::Invalid(
                    "the OpenBao token has characters a header cannot carry".into(),
                )
            })?;
            v.set_sensitive(true);
            req = req.header("X-Vault-Token", v);
        }
        if let Some(ns) = namespace.or(self.namespace.as_deref()) {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&b).unwrap_or_default());
        }
        let resp = req.send().await.map_err(|e| transport(path, &e))?;
        let status = resp.status().as_u16();
        let mut bytes: Vec<u8> = resp.bytes().await.map_err(|e| transport(path, &e))?.into();
        let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
        bytes.zeroize();
        if !(200..300).contains(&status) {
            let errors = parsed
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .and_then(|e| serde_json::from_value::<Vec<String>>(e).ok())
                .unwrap_or_default();
            return Err(by_status(path, status, &errors));
        }
        if status == 204 {
            return Ok(None);
        }
        let mut v = parsed.map_err(|_| {
            BackendError::Internal(format!(
                "`{path}`: OpenBao sent a response that is not JSON"
            ))
        })?;
        let reply = Reply {
            data: v.get_mut("data").map(Value::take).unwrap_or(Value::Null),
            lease_id: v["lease_id"].as_str().unwrap_or_default().to_string(),
            lease_duration: v["lease_duration"].as_u64().unwrap_or(0),
            renewable: v["renewable"].as_bool().unwrap_or(false),
        };
        if let Some(auth) = v.get_mut("auth") {
            wipe(auth);
        }
        Ok(Some(reply))
    }

    /// `sys/health` answers with a status code for sealed, standby and uninitialized servers.
    pub async fn health(&self) -> Result<String, BackendError> {
        let url = format!("{}/v1/sys/health", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport("sys/health", &e))?;
        match resp.status().as_u16() {
            200 | 429 | 472 | 473 => {
                let b = resp.bytes().await.unwrap_or_default();
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                Ok(format!(
                    "OpenBao {} at {}",
                    v["version"].as_str().unwrap_or("?"),
                    self.base
                ))
            }
            503 => Err(BackendError::Unavailable(format!(
                "OpenBao at {} is sealed",
                self.base
            ))),
            501 => Err(BackendError::Unavailable(format!(
                "OpenBao at {} is not initialized",
                self.base
            ))),
            s => Err(by_status("sys/health", s, &[])),
        }
    }
}

/// A vaultrs client whose token string is wiped when the call is done.
pub struct ScopedClient(pub VaultClient);

impl Drop for ScopedClient {
    fn drop(&mut self) {
        self.0.middle.token.zeroize();
        self.0.settings.token.zeroize();
    }
}

fn transport(path: &str, e: &reqwest::Error) -> BackendError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    BackendError::Unavailable(format!("OpenBao `{path}`: {what}"))
}

/// Maps an HTTP status (and OpenBao's error strings, which never carry values) to an error kind.
pub fn by_status(path: &str, status: u16, errors: &[String]) -> BackendError {
    let mut said = errors.join("; ");
    if said.len() > 200 {
        let mut cut = 200;
        while !said.is_char_boundary(cut) {
            cut -= 1;
        }
        said.truncate(cut);
    }
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    match status {
        403 => BackendError::Denied(format!(
            "OpenBao refused `{path}` (403): sidecred's own token lacks a policy for it, or the token is no longer valid{said}"
        )),
        404 => BackendError::NotFound(format!("OpenBao has nothing at `{path}` (404){said}")),
        400 if said.contains("check-and-set") => {
            BackendError::Precondition(format!("`{path}`: version changed concurrently{said}"))
        }
        400 | 405 | 422 => BackendError::Invalid(format!("OpenBao rejected `{path}` ({status}){said}")),
        412 | 429 | 500 | 502 | 503 | 504 => BackendError::Unavailable(format!(
            "OpenBao unavailable for `{path}` ({status}){}",
            if status == 503 && said.is_empty() { ": sealed or in maintenance" } else { &said }
        )),
        s => BackendError::Internal(format!("OpenBao answered `{path}` with {s}{said}")),
    }
}

/// Maps a vaultrs error for `path`; the error's Debug form may hold a response body, so only
/// its status and OpenBao's error strings are used.
pub fn from_vaultrs(path: &str, e: ClientError) -> BackendError {
    match e {
        ClientError::APIError { code, errors } => by_status(path, code, &errors),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                by_status(path, code, &[])
            }
            rustify::errors::ClientError::RequestError { .. }
            | rustify::errors::ClientError::ResponseError { .. } => {
                BackendError::Unavailable(format!("OpenBao `{path}`: cannot reach the server"))
            }
            _ => BackendError::Internal(format!("OpenBao `{path}`: malformed exchange")),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            BackendError::NotFound(format!("OpenBao returned no data for `{path}`"))
        }
        other => BackendError::Internal(format!("OpenBao `{path}`: {other}")),
    }
}
