//! Helpers for the AWS tests: config bodies, seeding and outside changes in moto, broker calls.

use crate::moto::Moto;
use sidecred::api::pb;
use std::time::Duration;
use tonic::transport::Channel;

pub type Broker = pb::broker_client::BrokerClient<Channel>;

/// Config body: one aws backend at `endpoint`, the given secrets, open policy for root.
pub fn body(endpoint: &str, backend_extra: &str, secrets: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        r#"
[backends.aws]
kind = "aws"
region = "us-east-1"
endpoint = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
initial_backoff = "20ms"
max_backoff = "200ms"
connect_timeout = "500ms"
{backend_extra}
"#
    );
    for (name, path, extra) in secrets {
        s.push_str(&format!(
            "\n[[secret]]\nname = \"{name}\"\nbackend = \"aws\"\npath = \"{path}\"\nzone = \"internal\"\n{extra}\n"
        ));
    }
    s.push_str(
        r#"
[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#,
    );
    s
}

pub async fn create(m: &Moto, name: &str, value: &str) -> String {
    m.client()
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

/// A rotation done outside sidecred: put as AWSPENDING, then move AWSCURRENT.
pub async fn rotate_outside(m: &Moto, name: &str, value: &str) -> String {
    let c = m.client();
    let d = c.describe_secret().secret_id(name).send().await.unwrap();
    let old = d
        .version_ids_to_stages()
        .unwrap()
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
        .map(|(id, _)| id.clone())
        .unwrap();
    let new = c
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    c.update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&new)
        .remove_from_version_id(old)
        .send()
        .await
        .unwrap();
    new
}

pub async fn stages(m: &Moto, name: &str) -> std::collections::HashMap<String, Vec<String>> {
    m.client()
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap_or_default()
}

pub async fn open(b: &mut Broker) -> String {
    b.open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}

pub async fn get(
    b: &mut Broker,
    sid: &str,
    name: &str,
    version: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    b.get_secret(pb::GetSecretRequest {
        name: name.into(),
        session_id: sid.into(),
        version: version.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn next_event(
    w: &mut tonic::Streaming<pb::SecretEvent>,
    limit: Duration,
) -> pb::SecretEvent {
    tokio::time::timeout(limit, w.message())
        .await
        .expect("watch event in time")
        .unwrap()
        .unwrap()
}

pub async fn watch(b: &mut Broker, sid: &str, name: &str) -> tonic::Streaming<pb::SecretEvent> {
    let mut w = b
        .watch_secret(pb::WatchSecretRequest {
            name: name.into(),
            session_id: sid.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(first.kind, pb::secret_event::Kind::Current as i32);
    w
}
