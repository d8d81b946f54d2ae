//! Compiles the gRPC protos with a vendored protoc, and emits the descriptor set for reflection.
//! Messages that carry secret values get no derived Debug; src/api/redact.rs writes a redacted one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sidecred_descriptor.bin"))
        .skip_debug([
            ".sidecred.v1.GetSecretResponse",
            ".sidecred.v1.SecretVersion",
            ".sidecred.v1.RotateRequest",
        ])
        .compile_protos(
            &[
                "proto/sidecred/v1/broker.proto",
                "proto/sidecred/v1/admin.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure().compile_protos(&["proto/bench/echo.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
