//! Compiles `ringbridge/v1/*.proto` with protox (pure Rust, no system `protoc`) and emits the
//! tonic client/server code plus a file descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ringbridge/v1/bridge.proto", "ringbridge/v1/control.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ringbridge_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Decode errors become INVALID_ARGUMENT (see src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
