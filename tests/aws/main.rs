//! The AWS Secrets Manager backend through the real binary, against moto's server mode
//! (started per test on a free loopback port; faults come from a loopback proxy).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fault_proxy.rs"]
mod fault_proxy;
#[path = "../common/moto.rs"]
mod moto;

mod adversary;
mod faults;
mod reads;
mod rotation;
mod support;

#[test]
fn example_config_is_accepted() {
    let out = std::process::Command::new(common::BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aws.toml"),
        ])
        .env("AWS_REGION", "eu-west-1")
        .env("SIDECRED_AWS_ENDPOINT", "http://127.0.0.1:4566")
        .output()
        .unwrap();
    common::ok_stdout(&out);
}
