//! OTLP/HTTP JSON trace export, built on the reqwest already in the tree rather than the
//! OpenTelemetry SDK (which would bring a second hyper/tonic stack).
//!
//! A tracing layer turns sidecred's spans into OTLP spans; a task POSTs them in batches. A span's
//! attributes are its fields, which carry names and ids, never secret values. A span joins the
//! caller's trace when it has a valid `trace_id` field (the `rpc` span, from `traceparent`), and its
//! `parent_span_id` field then names the caller's span. Requests never wait on the exporter: a full
//! queue drops spans and counts them.

use serde_json::{json, Value};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Spans per POST, at most.
const BATCH: usize = 512;
/// Finished spans waiting for export; beyond this they are dropped.
const QUEUE: usize = 4096;
/// A partial batch is sent after this long.
const INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one POST; a slow collector costs a batch, not memory.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Export failures are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// OTLP `SpanKind`: the `rpc` span serves a caller; the others are internal.
const KIND_SERVER: u8 = 2;
const KIND_INTERNAL: u8 = 1;

/// Spans dropped because the export queue was full.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One span, as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, String)>,
}

/// The tracing layer; build it with [`layer`].
pub struct OtlpLayer {
    tx: mpsc::Sender<SpanData>,
}

/// Starts the exporter task (needs a tokio runtime) and returns the layer feeding it.
pub fn layer(endpoint: &str, service_name: &str) -> Result<OtlpLayer, String> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| "OTLP export needs a tokio runtime".to_string())?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("OTLP HTTP client: {e}"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    rt.spawn(export(
        rx,
        client,
        endpoint.to_owned(),
        service_name.to_owned(),
    ));
    Ok(OtlpLayer { tx })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A W3C id in lowercase or uppercase hex, refused when malformed or all zeros.
fn parse_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    out.iter().any(|b| *b != 0).then_some(out)
}

fn random_id<const N: usize>() -> [u8; N]
where
    rand::distr::StandardUniform: rand::distr::Distribution<[u8; N]>,
{
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// A span's fields as strings; empty values are left out.
struct Fields<'a>(&'a mut Vec<(&'static str, String)>);

impl Fields<'_> {
    fn set(&mut self, key: &'static str, value: String) {
        self.0.retain(|(k, _)| *k != key);
        if !value.is_empty() {
            self.0.push((key, value));
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

fn field<'a>(attrs: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

impl<S> tracing_subscriber::Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut attributes = Vec::new();
        attrs.record(&mut Fields(&mut attributes));
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<SpanData>()
                .map(|d| (d.trace_id, d.span_id))
        });
        let remote = field(&attributes, "trace_id").and_then(parse_id::<16>);
        let (trace_id, parent_span_id) = match (remote, parent) {
            (Some(t), _) => (
                t,
                field(&attributes, "parent_span_id").and_then(parse_id::<8>),
            ),
            (None, Some((t, s))) => (t, Some(s)),
            (None, None) => (random_id(), None),
        };
        span.extensions_mut().insert(SpanData {
            trace_id,
            span_id: random_id(),
            parent_span_id,
            name: attrs.metadata().name(),
            start_ns: now_ns(),
            end_ns: 0,
            attributes,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(d) = span.extensions_mut().get_mut::<SpanData>() {
                values.record(&mut Fields(&mut d.attributes));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut d) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        d.end_ns = now_ns();
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(d) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The OTLP/HTTP JSON body (protobuf JSON mapping; ids as hex, nanos as strings).
pub fn encode(service_name: &str, spans: &[SpanData]) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": hex::encode(s.trace_id),
                "spanId": hex::encode(s.span_id),
                "name": s.name,
                "kind": if s.name == "rpc" { KIND_SERVER } else { KIND_INTERNAL },
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
            });
            if let Some(p) = s.parent_span_id {
                v["parentSpanId"] = hex::encode(p).into();
            }
            v
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", service_name)]},
        "scopeSpans": [{
            "scope": {"name": "sidecred", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

/// Collects batches (full, or after [`INTERVAL`]) and POSTs them until every sender is gone.
async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    client: reqwest::Client,
    url: String,
    service: String,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_warn: Option<Instant> = None;
    let mut dropped_seen = 0;
    let mut open = true;
    while open {
        let deadline = tokio::time::Instant::now() + INTERVAL;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            let more = rx.recv_many(&mut batch, room);
            match tokio::time::timeout_at(deadline, more).await {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let failure = if batch.is_empty() {
            None
        } else {
            let body = encode(&service, &batch).to_string();
            batch.clear();
            let sent = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("collector answered HTTP {}", r.status().as_u16())),
                Err(e) => Some(format!("POST failed: {e}")),
            }
        };
        let dropped = DROPPED.load(Ordering::Relaxed);
        if (failure.is_some() || dropped > dropped_seen)
            && last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY)
        {
            last_warn = Some(Instant::now());
            dropped_seen = dropped;
            tracing::warn!(
                endpoint = %url,
                error = failure.as_deref().unwrap_or("none"),
                dropped_spans = dropped,
                "OTLP span export is failing or falling behind"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &'static str, parent: Option<[u8; 8]>) -> SpanData {
        SpanData {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_span_id: parent,
            name,
            start_ns: 1_700_000_000_000_000_001,
            end_ns: 1_700_000_000_000_000_999,
            attributes: vec![("rpc", "GetSecret".into())],
        }
    }

    #[test]
    fn encoding_table() {
        let cases = [
            (span("rpc", Some([0x02; 8])), 2, Some("0202020202020202")),
            (span("fetch", None), 1, None),
        ];
        for (s, kind, parent) in cases {
            let v = encode("svc", std::slice::from_ref(&s));
            let rs = &v["resourceSpans"][0];
            assert_eq!(
                rs["resource"]["attributes"][0],
                json!({"key": "service.name", "value": {"stringValue": "svc"}})
            );
            let out = &rs["scopeSpans"][0]["spans"][0];
            assert_eq!(out["traceId"], "ab".repeat(16), "{}", s.name);
            assert_eq!(out["spanId"], "0101010101010101");
            assert_eq!(out["parentSpanId"].as_str(), parent);
            assert_eq!(out["name"], s.name);
            assert_eq!(out["kind"], kind);
            assert_eq!(out["startTimeUnixNano"], "1700000000000000001");
            assert_eq!(out["endTimeUnixNano"], "1700000000000000999");
            assert_eq!(
                out["attributes"],
                json!([{"key": "rpc", "value": {"stringValue": "GetSecret"}}])
            );
        }
    }

    #[test]
    fn id_table() {
        assert_eq!(
            parse_id::<8>("00f067aa0ba902b7"),
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(parse_id::<8>("00F067AA0BA902B7").map(|_| ()), Some(()));
        for bad in [
            "",
            "0000000000000000",
            "00f067aa0ba902",
            "zzf067aa0ba902b7",
            "00f067aa0ba902b7aa",
        ] {
            assert_eq!(parse_id::<8>(bad), None, "{bad}");
        }
        assert_ne!(random_id::<16>(), [0; 16]);
    }

    #[test]
    fn fields_keep_the_last_value_and_skip_empty_ones() {
        let mut v = Vec::new();
        let mut f = Fields(&mut v);
        f.set("trace_id", String::new());
        f.set("code", "Unknown".into());
        f.set("code", "Ok".into());
        assert_eq!(v, vec![("code", "Ok".to_string())]);
    }
}
