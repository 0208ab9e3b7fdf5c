//! Compiles `proto/` with tonic's codegen, using the protoc vendored from crates.io so that a fresh
//! machine needs nothing but cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("cedar_pdp_descriptor.bin"))
        .compile_protos(&["proto/cedar_pdp/v1/authorization.proto", "proto/cedar_pdp/v1/entities.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
