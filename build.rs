//! Compiles the gRPC contracts in `proto/` with protox (a protobuf compiler in Rust), so the
//! build needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/broker.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_build::configure().compile_fds(descriptors)?;
    Ok(())
}
