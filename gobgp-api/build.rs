//! Compile GoBGP's .proto files with protox (pure Rust: no protoc, no -dev
//! package) into a tonic client; the server side is not generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/gobgp.proto", "proto/attribute.proto", "proto/capability.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
