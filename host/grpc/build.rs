//! Compiles the protocol's .proto with protox (no protoc needed) into prost messages and the
//! tonic service (server and client: the tests and benchmarks call the server with it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["grpc_predict_v2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
