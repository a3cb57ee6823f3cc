//! Split inference through two gateways: the digits CNN cut at every place
//! `edgeplug_models::split` finds, its head on gateway A (the split test plugin, escalating the
//! cut tensor to its upstream `tail`), its tail on gateway B, answers the whole model's output.

use edgeplug::client::ChunkedBody;
use edgeplug_models::model::Model;
use edgeplug_models::split;
use edgeplug_tests::gateway::*;
use serde_json::{Value, json};

async fn deploy(gw: &TestGateway, bundle: Vec<u8>) {
    gw.send(
        req("DELETE", "/v1/admin/plugins/split")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(ChunkedBody::new(Vec::new()))
            .unwrap(),
    )
    .await;
    assert_status(&gw.push("split", bundle).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_cut_anywhere_answers_as_the_whole_across_two_gateways() {
    let onnx =
        std::fs::read(edgeplug_tests::repo().join("plugins/digits/digits_cnn.onnx")).unwrap();
    let (values, label) = digits_tensor_input();
    let input = edgeplug_kernels::Tensor::from_f32(vec![1, 1, 16, 16], values.clone()).unwrap();
    let whole = Model::load("digits", &onnx).unwrap();
    let expected = whole.run(&[&input]).unwrap().remove(0);
    let expected = expected.as_f32().unwrap().to_vec();

    let b = TestGateway::start("").await;
    let a = TestGateway::start(&format!(
        "[upstreams.tail]\nurl = \"http://{}\"\ntimeout_ms = 5000\n",
        b.addr
    ))
    .await;
    let points = split::cut_points(&onnx).unwrap();
    assert_eq!(points.len(), 21);
    for point in points {
        let shape = split::tensor_shape(&onnx, &point.tensor, &input).unwrap();
        let (head, tail) = split::split(&onnx, &point.tensor, Some(&shape)).unwrap();
        deploy(&a, split_bundle(&a.key, "head", &head)).await;
        deploy(&b, split_bundle(&b.key, "tail", &tail)).await;
        let request = json!({"inputs": [{"name": "input", "shape": [1, 1, 16, 16],
                                          "datatype": "FP32", "data": values}]});
        let answer = a
            .post(
                "/v2/models/split/infer",
                "application/json",
                request.to_string(),
            )
            .await;
        assert_status(&answer, 200);
        let answer = json_of(&answer);
        let output = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probs")
            .unwrap_or_else(|| panic!("cut at {}: no probs in {answer}", point.tensor));
        let data: Vec<Value> = output["data"].as_array().unwrap().clone();
        assert_eq!(argmax(&data), label as usize, "cut at {}", point.tensor);
        for (got, want) in data.iter().zip(&expected) {
            let got = got.as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-5,
                "cut at {}: {got} vs {want}",
                point.tensor
            );
        }
    }
    // A's escalations all reached B.
    let metrics = String::from_utf8_lossy(a.get("/metrics").await.body()).to_string();
    assert!(
        metrics.contains("edgeplug_escalations_total{plugin=\"split\",upstream=\"tail\"} 21"),
        "{metrics}"
    );
}
