//! Compiles `proto/meridian/v1/*.proto` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A canonical path, so that cargo's change tracking sees the same file it was told about.
    // Read when the script runs, not when it is compiled: checkouts sharing a target dir may
    // share the compiled script.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    let files = ["types.proto", "region.proto", "coordinator.proto"]
        .map(|f| root.join("meridian/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
