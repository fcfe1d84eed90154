//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/lifeboat.proto"], ["proto"])?;
    // Chunk payloads are `bytes::Bytes`: the receiver slices them out of the HTTP/2
    // buffer instead of copying every megabyte.
    tonic_prost_build::configure()
        .bytes(".lifeboat.v1.ChunkBlob.blob")
        .compile_fds(fds)?;
    Ok(())
}
