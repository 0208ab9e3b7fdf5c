//! Compiles `proto/` with tonic's codegen, using the protoc vendored from crates.io so that a fresh
//! machine needs nothing but cargo; and Envoy's ext_authz protos (`proto/vendor/`) into a descriptor
//! set for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", &protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("cedar_pdp_descriptor.bin"))
        .compile_protos(&["proto/cedar_pdp/v1/authorization.proto", "proto/cedar_pdp/v1/entities.proto"], &["proto"])?;
    // Envoy's ext_authz service, for reflection only (its code comes from envoy-types).
    let status = std::process::Command::new(&protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out_dir.join("envoy_authz_descriptor.bin").display()))
        .arg("-Iproto/vendor")
        .arg(format!("-I{}", protoc_bin_vendored::include_path()?.display()))
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/vendor: {status}").into());
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
