//! The gRPC port with a plain tonic client: what it refuses and why, back-pressure, TLS.
//! (`clients.rs` drives it with Triton's own client.)

use edgeplug_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use edgeplug_grpc::proto::model_infer_request::InferInputTensor;
use edgeplug_grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelReadyRequest, ServerLiveRequest,
};
use edgeplug_tests::gateway::{
    TestGateway, assert_status, digits_bundle, digits_tensor_input, test_plugin_bundle,
};
use tonic::Code;
use tonic::transport::Channel;

/// The gRPC port of `gateway`, on 127.0.0.1:0.
pub async fn grpc_for(gateway: &TestGateway) -> edgeplug_grpc::GrpcServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = edgeplug_grpc::GrpcConfig {
        listen: listener.local_addr().unwrap(),
        max_concurrent_streams: 64,
    };
    edgeplug_grpc::start(gateway.gateway.clone(), &config, listener).unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn digits_request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "digits".into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The class an answer's `probs` output gives.
fn label_of(answer: &edgeplug_grpc::proto::ModelInferResponse) -> usize {
    let at = answer
        .outputs
        .iter()
        .position(|o| o.name == "probs")
        .unwrap();
    let probs: Vec<f32> = answer.raw_output_contents[at]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_malformed_requests_with_reasons_and_keeps_serving() {
    // A 1 MiB cap on requests, so a message over it is cheap to send.
    let gateway = TestGateway::start("[limits]\nmax_request_mib = 1\n").await;
    assert_status(
        &gateway
            .push("digits", digits_bundle(&gateway.key, "1.0.0"))
            .await,
        200,
    );
    let grpc = grpc_for(&gateway).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", grpc.addr))
        .await
        .unwrap();
    let (pixels, label) = digits_tensor_input();
    let input = || tensor("input", "FP32", &[1, 1, 16, 16]);

    // Raw and typed contents both work.
    let answer = client
        .model_infer(digits_request(vec![input()], vec![f32_bytes(&pixels)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "1.0.0");
    assert_eq!(label_of(&answer) as i64, label);
    let mut typed = input();
    typed.contents = Some(InferTensorContents {
        fp32_contents: pixels.clone(),
        ..Default::default()
    });
    let answer = client
        .model_infer(digits_request(vec![typed.clone()], Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(label_of(&answer) as i64, label);

    let mut nan = pixels.clone();
    nan[3] = f32::NAN;
    let mut negative = input();
    negative.shape = vec![1, -1, 16, 16];
    let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
        (
            digits_request(vec![input()], vec![f32_bytes(&pixels), Vec::new()]),
            Code::InvalidArgument,
            "2 entries for 1 inputs",
        ),
        (
            digits_request(vec![input()], vec![vec![0; 10]]),
            Code::InvalidArgument,
            "needs 1024 bytes",
        ),
        (
            digits_request(vec![input()], vec![f32_bytes(&nan)]),
            Code::InvalidArgument,
            "must be finite",
        ),
        (
            digits_request(vec![typed.clone()], vec![f32_bytes(&pixels)]),
            Code::InvalidArgument,
            "both contents and raw_input_contents",
        ),
        (
            digits_request(vec![input()], Vec::new()),
            Code::InvalidArgument,
            "no data",
        ),
        (
            digits_request(vec![negative], vec![f32_bytes(&pixels)]),
            Code::InvalidArgument,
            "non-negative",
        ),
        (
            digits_request(
                vec![tensor("pixels", "FP32", &[1, 1, 16, 16])],
                vec![f32_bytes(&pixels)],
            ),
            Code::InvalidArgument,
            "not an input of this model",
        ),
        (
            digits_request(vec![tensor("input", "FP16", &[1])], vec![vec![0, 0]]),
            Code::InvalidArgument,
            "not supported",
        ),
        (
            // The plugin's own verdict: a tensor of the wrong shape.
            digits_request(
                vec![tensor("input", "FP32", &[1, 4])],
                vec![f32_bytes(&[0.0; 4])],
            ),
            Code::InvalidArgument,
            "shape-mismatch",
        ),
        (
            ModelInferRequest {
                model_name: "digits".into(),
                model_version: "9.9.9".into(),
                ..Default::default()
            },
            Code::NotFound,
            "not the active version",
        ),
        (
            ModelInferRequest {
                model_name: "nope".into(),
                ..Default::default()
            },
            Code::NotFound,
            "\"nope\" not found",
        ),
    ];
    for (request, code, reason) in cases {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(reason),
            "{reason:?} in {status:?}"
        );
    }
    // A message over the gateway's cap is refused before it is decoded.
    let big = vec![b'x'; 2 << 20];
    let status = client
        .model_infer(digits_request(
            vec![tensor("body", "BYTES", &[1])],
            vec![big],
        ))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert!(status.message().contains("too large"), "{status:?}");
    let status = client
        .model_ready(ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // After all that, the port and the plugin still answer.
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", grpc.addr))
        .await
        .unwrap();
    let answer = client
        .model_infer(digits_request(vec![input()], vec![f32_bytes(&pixels)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(label_of(&answer) as i64, label);
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_meets_the_same_permits_as_http() {
    let gateway = TestGateway::start("").await;
    let key = gateway.key.clone();
    let bundle = tokio::task::spawn_blocking(move || test_plugin_bundle(&key, "infinite-loop"))
        .await
        .unwrap();
    assert_status(&gateway.push("infinite-loop", bundle).await, 200);
    let grpc = grpc_for(&gateway).await;
    let client = GrpcInferenceServiceClient::connect(format!("http://{}", grpc.addr))
        .await
        .unwrap();
    // Six calls at once on a plugin with 4 permits that loops until its 300 ms deadline.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut client: GrpcInferenceServiceClient<Channel> = client.clone();
            tokio::spawn(async move {
                client
                    .model_infer(ModelInferRequest {
                        model_name: "infinite-loop".into(),
                        inputs: vec![tensor("body", "BYTES", &[1])],
                        raw_input_contents: vec![vec![1, 0, 0, 0, b'x']],
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        let status = call.await.unwrap();
        if status.code() == Code::Unavailable {
            assert!(status.message().contains("retry later"), "{status:?}");
        }
        codes.push(status.code());
    }
    let refused = codes.iter().filter(|c| **c == Code::Unavailable).count();
    let cut = codes
        .iter()
        .filter(|c| **c == Code::DeadlineExceeded)
        .count();
    assert!(refused >= 1 && cut >= 1 && refused + cut == 6, "{codes:?}");
    let metrics = String::from_utf8(gateway.get("/metrics").await.into_body().to_vec()).unwrap();
    assert!(
        metrics.contains(&format!(
            "edgeplug_grpc_calls_total{{method=\"ModelInfer\",code=\"UNAVAILABLE\"}} {refused}"
        )),
        "{metrics}"
    );
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_the_gateways_certificate() {
    let certificate = crate::gateway::LocalhostCertificate::new();
    let gateway = TestGateway::start(&certificate.config()).await;
    let grpc = grpc_for(&gateway).await;
    let url = format!("https://localhost:{}", grpc.addr.port());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&certificate.pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let live = GrpcInferenceServiceClient::new(channel)
        .server_live(ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.into_inner().live);
    // Plain text to the TLS port gets nowhere.
    let plain = format!("http://127.0.0.1:{}", grpc.addr.port());
    let refused = match GrpcInferenceServiceClient::connect(plain).await {
        Err(_) => true,
        Ok(mut client) => client.server_live(ServerLiveRequest {}).await.is_err(),
    };
    assert!(refused);
    grpc.stop().await;
}
