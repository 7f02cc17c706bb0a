//! Compiles the .proto files with protox (pure Rust, no system protoc) and
//! generates prost messages with `Bytes` payload fields plus tonic stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dapr/proto/common/v1/common.proto",
        "proto/dapr/proto/runtime/v1/dapr.proto",
        "proto/dapr/proto/runtime/v1/appcallback.proto",
        "proto/dapr/proto/sentry/v1/sentry.proto",
        "proto/dapr/proto/placement/v1/placement.proto",
        "proto/skiff/echo/v1/echo.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Payload bytes are reference-counted so they move through the sidecar without copies.
        .bytes(".")
        // Generate google.protobuf.Any (and Empty) here too, so `Any.value`
        // is `Bytes` as well instead of prost-types' `Vec<u8>`.
        .compile_well_known_types(true)
        .compile_fds(fds)?;
    Ok(())
}
