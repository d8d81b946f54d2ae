//! Arbitrary bytes as gRPC requests, through the real tonic services in-process: a fresh engine
//! with the dev backend, the generated `BrokerServer`/`AdminServer`, the caller identity the
//! server attaches at accept. Every answer must be a gRPC status, never a panic or a hang.
//!
//! Input: a sequence of `[selector, len, len bytes]`. The selector picks the RPC (low 4 bits),
//! whether the caller is allowed (bit 4), and whether the bytes go out unframed (bit 5).
//! A decoded `session_id`/`lease_id` of "@" becomes the live session's / lease's id, so the
//! fuzzer reaches the paths behind a valid session.
#![no_main]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sidecred::api::admin::AdminService;
use sidecred::api::broker::BrokerService;
use sidecred::api::h2serve;
use sidecred::api::pb::{self, admin_server::AdminServer, broker_server::BrokerServer};
use sidecred::api::peer::PeerIdentity;
use sidecred::audit::Audit;
use sidecred::clock::SystemClock;
use sidecred::config::{Config, SecretSpec};
use sidecred::engine::{Catalog, Engine, GetRequest};
use sidecred::session::Owner;
use std::sync::{Arc, OnceLock};
use tower::Service;

const CONFIG: &str = r#"
[server]
workload_socket = "/fuzz/w/workload.sock"
admin_socket = "/fuzz/a/admin.sock"
max_session_ttl = "1h"
default_session_ttl = "10m"
backend_timeout = "1s"

[backends.dev]
kind = "dev"
values = { "static/a" = "value-a-1", "static/b" = "value-b-1" }
dynamic_ttl = "60s"

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "60s"
grace = "2s"

[[secret]]
name = "app/missing"
backend = "dev"
path = "nowhere"
zone = "external"

[[secret]]
name = "db/dyn"
backend = "dev"
path = "db"
zone = "restricted"
scope = "session"
options = { dynamic = true }

[[secret]]
name = "db/call"
backend = "dev"
path = "dbcall"
zone = "restricted"
scope = "call"
options = { dynamic = true }

[[policy.workload]]
name = "root"
uids = [0]
secrets = ["app/*", "db/*"]

[[policy.workload]]
name = "apps-only"
uids = [1000]
secrets = ["app/a"]
zones = ["internal"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#;

const METHODS: [&str; 9] = [
    "/sidecred.v1.Broker/OpenSession",
    "/sidecred.v1.Broker/CloseSession",
    "/sidecred.v1.Broker/GetSecret",
    "/sidecred.v1.Broker/ReleaseLease",
    "/sidecred.v1.Broker/WatchSecret",
    "/sidecred.v1.Admin/RevokeSession",
    "/sidecred.v1.Admin/Rotate",
    "/sidecred.v1.Admin/ListSessions",
    "/sidecred.v1.Admin/Status",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fn config() -> Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        Config::parse(std::path::Path::new("/fuzz/sidecred.toml"), CONFIG, &|_| {
            None
        })
        .expect("fuzz config is valid")
    })
    .clone()
}

fn caller(uid: u32) -> PeerIdentity {
    PeerIdentity {
        uid,
        gid: uid,
        pid: 1,
        exe: None,
        start_time: None,
        proc_dir: None,
        reads: None,
    }
}

/// Re-encodes a decodable message with "@" ids made live; anything else goes out as it came.
fn prepare(method: usize, raw: &[u8], sid: &str, lease: &str) -> Vec<u8> {
    let fix = |s: &mut String, live: &str| {
        if s == "@" {
            *s = live.to_string();
        }
    };
    macro_rules! patch {
        ($ty:ty, |$m:ident| $body:block) => {
            match <$ty>::decode(raw) {
                Ok(mut $m) => {
                    $body;
                    $m.encode_to_vec()
                }
                Err(_) => raw.to_vec(),
            }
        };
    }
    match method {
        1 => patch!(pb::CloseSessionRequest, |m| { fix(&mut m.session_id, sid) }),
        2 => patch!(pb::GetSecretRequest, |m| { fix(&mut m.session_id, sid) }),
        3 => patch!(pb::ReleaseLeaseRequest, |m| {
            fix(&mut m.session_id, sid);
            fix(&mut m.lease_id, lease)
        }),
        4 => patch!(pb::WatchSecretRequest, |m| { fix(&mut m.session_id, sid) }),
        5 => patch!(pb::RevokeSessionRequest, |m| {
            fix(&mut m.session_id, sid)
        }),
        _ => raw.to_vec(),
    }
}

fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(msg.len() + 5);
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

async fn call(engine: &Arc<Engine>, method: usize, uid: u32, body: Vec<u8>) {
    // Unary Broker calls take the workload socket's own path (h2serve); the rest go through
    // the tonic services, as they do on the sockets.
    let broker = BrokerService {
        engine: engine.clone(),
    };
    if let Some(out) = h2serve::unary_call(
        &broker,
        METHODS[method],
        caller(uid),
        Bytes::from(body.clone()),
    )
    .await
    {
        if let Ok(msg) = out {
            assert!(msg.len() >= 5, "an answer is a framed message");
        }
        return;
    }
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://sidecred{}", METHODS[method]))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    req.extensions_mut().insert(caller(uid));
    let resp = if method < 5 {
        let mut svc = BrokerServer::new(BrokerService {
            engine: engine.clone(),
        })
        .max_decoding_message_size(sidecred::api::server::MAX_REQUEST_BYTES);
        svc.call(req).await
    } else {
        let mut svc = AdminServer::new(AdminService {
            engine: engine.clone(),
            proxy_bundle: None,
        })
        .max_decoding_message_size(sidecred::api::server::MAX_REQUEST_BYTES);
        svc.call(req).await
    };
    let resp = resp.expect("tonic services are infallible");
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut body = resp.into_body();
    if method == 4 {
        // A watch streams until the session ends: its first event is enough.
        let _ = body.frame().await;
    } else {
        let _ = body.collect().await;
    }
}

async fn run(data: &[u8]) {
    let cat = Catalog::build(config(), 1, Arc::new(SystemClock))
        .await
        .expect("catalog");
    let engine = Engine::new(cat, Arc::new(SystemClock), Audit::disabled());
    let root = caller(0);
    let owner = Owner {
        uid: 0,
        rule: "root".into(),
        process: None,
    };
    let session = engine
        .open_session(&root, owner.clone(), None, Default::default())
        .await
        .expect("session");
    let sid = session.meta.id.clone();
    let cat = engine.catalog();
    let spec: &SecretSpec = cat.secret("db/call").expect("db/call");
    let grant = engine
        .get_secret(
            &cat,
            spec,
            &root,
            GetRequest {
                owner: &owner,
                session_id: &sid,
                call_id: Some("c1"),
                version: None,
                spiffe_id: None,
                sans: None,
            },
        )
        .await
        .expect("grant");
    // The grant's reply guard is released once its answer is out, as the transport does;
    // holding it would make a later close or revocation wait for this harness forever.
    let lease_id = grant.lease_id.clone();
    drop(grant);
    let mut rest = data;
    for _ in 0..8 {
        let [sel, len, tail @ ..] = rest else { break };
        let n = (*len as usize).min(tail.len());
        let (raw, next) = tail.split_at(n);
        rest = next;
        let method = (*sel & 0x0f) as usize % METHODS.len();
        let uid = if sel & 0x10 == 0 { 0 } else { 1000 };
        let msg = prepare(method, raw, &sid, &lease_id);
        let body = if sel & 0x20 == 0 {
            grpc_frame(&msg)
        } else {
            msg
        };
        call(&engine, method, uid, body).await;
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});
