//! Compiles sidecred's Broker and Admin protos with a vendored protoc, and emits the descriptor
//! set for reflection. Messages that carry secret values get no derived Debug; a hand-written,
//! redacted one replaces it (src/redact.rs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(server)
        .file_descriptor_set_path(out.join("sidecred_descriptor.bin"))
        .skip_debug([
            ".sidecred.v1.GetSecretResponse",
            ".sidecred.v1.SecretVersion",
            ".sidecred.v1.RotateRequest",
        ])
        .compile_protos(
            &[
                root.join("sidecred/v1/broker.proto"),
                root.join("sidecred/v1/admin.proto"),
            ],
            std::slice::from_ref(&root),
        )?;
    println!("cargo:rerun-if-changed={}", root.join("sidecred").display());
    Ok(())
}
