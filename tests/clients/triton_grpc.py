"""Drives an edgeplug gateway's gRPC port with Triton's own gRPC client
(`tritonclient.grpc`), the way a Triton user would: metadata, FP32 tensors, an encoded photo
as a BYTES input, the classification extension, a request timeout and the errors.

It asserts nothing itself: it prints what it saw as one JSON object on stdout, and the Rust
test (tests/tests/it/clients.rs) checks that against the reference outputs.

usage: triton_grpc.py HOST:PORT FIXTURES_DIR
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient

from common import error_of


def main():
    url, fixtures = sys.argv[1], sys.argv[2]
    client = grpcclient.InferenceServerClient(url)
    meta = client.get_model_metadata("digits", as_json=True)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "extensions": client.get_server_metadata(as_json=True)["extensions"],
        "digits_ready": client.is_model_ready("digits"),
        "digits_inputs": meta["inputs"],
    }

    inputs = np.load(f"{fixtures}/digits/digits_test.npy")
    argmax, labels = [], []
    for x in inputs:
        tensor = grpcclient.InferInput("input", [1, 1, 16, 16], "FP32")
        tensor.set_data_from_numpy(x.reshape(1, 1, 16, 16).astype(np.float32))
        result = client.infer("digits", [tensor])
        argmax.append(int(np.argmax(result.as_numpy("probs"))))
        labels.append(json.loads(result.as_numpy("body")[0])["label"])
    seen["digits"], seen["digits_body_labels"] = argmax, labels

    top = []
    for name in ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]:
        photo = grpcclient.InferInput("image", [1], "BYTES")
        photo.set_data_from_numpy(np.array([open(f"{fixtures}/images/{name}", "rb").read()], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput("logits", class_count=3)]
        result = client.infer("image-classifier", [photo], outputs=outputs)
        top.append([c.decode() for c in result.as_numpy("logits").reshape(-1)])
    seen["photos_top3"] = top

    reference = np.load(f"{fixtures}/imagenet/mobilenetv2_input.npy")
    logits = []
    for x in reference:
        tensor = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(x.reshape(1, 3, 224, 224).astype(np.float32))
        result = client.infer("image-classifier", [tensor], outputs=[grpcclient.InferRequestedOutput("logits")])
        logits.append(result.as_numpy("logits").reshape(-1).tolist())
    seen["tensor_logits"] = logits

    zeros = grpcclient.InferInput("input", [1, 1, 16, 16], "FP32")
    zeros.set_data_from_numpy(np.zeros((1, 1, 16, 16), dtype=np.float32))
    seen["timeout_error"] = error_of(lambda: client.infer("digits", [zeros], timeout=1))
    wrong = grpcclient.InferInput("input", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    seen["shape_error"] = error_of(lambda: client.infer("digits", [wrong]))
    seen["unknown_model_error"] = error_of(lambda: client.infer("nope", [zeros]))
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
