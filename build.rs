//! Compiles the server's other protos with a vendored protoc: the SPIFFE Workload API and Envoy
//! SDS. sidecred's own services are in the `sidecred-proto` crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let wkt = protoc_bin_vendored::include_path()?;
    // The SPIFFE Workload API and Envoy SDS: public wire formats, served on the SPIFFE socket.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("spiffe_descriptor.bin"))
        .skip_debug([".X509SVID", ".JWTSVID", ".envoy.config.core.v3.DataSource"])
        .compile_protos(
            &[
                "proto/spiffe/workload.proto",
                "proto/envoy/service/secret/v3/sds.proto",
                "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
            ],
            &[
                "proto",
                wkt.to_str().ok_or("protoc include path is not UTF-8")?,
            ],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
