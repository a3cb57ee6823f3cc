"""Drives an edgeplug gateway with Triton's own HTTP client (`tritonclient.http`), the way a
Triton user would: its defaults (binary tensor data), JSON tensors, an encoded photo as a
BYTES input, the classification extension, statistics and a request timeout.

It asserts nothing itself: it prints what it saw as one JSON object on stdout, and the Rust
test (tests/tests/it/clients.rs) checks that against the reference outputs.

usage: triton_http.py HOST:PORT FIXTURES_DIR
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

from common import error_of


def digits(client, fixtures, binary):
    """Every held-out digit as an FP32 [1, 1, 16, 16] tensor: the argmax of each answer."""
    inputs = np.load(f"{fixtures}/digits/digits_test.npy")
    argmax = []
    bodies = []
    for x in inputs:
        tensor = httpclient.InferInput("input", [1, 1, 16, 16], "FP32")
        tensor.set_data_from_numpy(x.reshape(1, 1, 16, 16).astype(np.float32), binary_data=binary)
        if binary:
            # The defaults: no outputs named, so every output comes back binary.
            result = client.infer("digits", [tensor])
            bodies.append(json.loads(result.as_numpy("body")[0])["label"])
        else:
            outputs = [httpclient.InferRequestedOutput("probs", binary_data=False)]
            result = client.infer("digits", [tensor], outputs=outputs)
        argmax.append(int(np.argmax(result.as_numpy("probs"))))
    return argmax, bodies


def photos(client, fixtures):
    """The four photos sent encoded, as BYTES: the top class by the classification extension."""
    names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]
    top = []
    for name in names:
        data = open(f"{fixtures}/images/{name}", "rb").read()
        photo = httpclient.InferInput("image", [1], "BYTES")
        photo.set_data_from_numpy(np.array([data], dtype=np.object_))
        # tritonclient has no way to say the media type: the gateway recognizes PNG and JPEG.
        outputs = [httpclient.InferRequestedOutput("logits", class_count=3)]
        result = client.infer("image-classifier", [photo], outputs=outputs)
        top.append([c.decode() for c in result.as_numpy("logits").reshape(-1)])
    return top


def tensors(client, fixtures):
    """The reference inputs as FP32 [1, 3, 224, 224] tensors: the logits, binary both ways."""
    inputs = np.load(f"{fixtures}/imagenet/mobilenetv2_input.npy")
    logits = []
    for x in inputs:
        tensor = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(x.reshape(1, 3, 224, 224).astype(np.float32))
        result = client.infer(
            "image-classifier",
            [tensor],
            outputs=[httpclient.InferRequestedOutput("logits")],
        )
        logits.append(result.as_numpy("logits").reshape(-1).tolist())
    return logits


def main():
    url, fixtures = sys.argv[1], sys.argv[2]
    client = httpclient.InferenceServerClient(url)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "extensions": client.get_server_metadata()["extensions"],
        "digits_ready": client.is_model_ready("digits"),
        "digits_inputs": client.get_model_metadata("digits")["inputs"],
    }
    seen["digits_binary"], seen["digits_body_labels"] = digits(client, fixtures, True)
    seen["digits_json"], _ = digits(client, fixtures, False)
    seen["photos_top3"] = photos(client, fixtures)
    seen["tensor_logits"] = tensors(client, fixtures)

    tensor = httpclient.InferInput("input", [1, 1, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 16, 16), dtype=np.float32))
    # A timeout of one microsecond has passed before any plugin can run.
    seen["timeout_error"] = error_of(lambda: client.infer("digits", [tensor], timeout=1))
    wrong = httpclient.InferInput("input", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    seen["shape_error"] = error_of(lambda: client.infer("digits", [wrong]))
    seen["unknown_model_error"] = error_of(lambda: client.infer("nope", [tensor]))

    stats = client.get_inference_statistics("digits")["model_stats"][0]
    seen["digits_stats"] = {
        "inference_count": stats["inference_count"],
        "success": stats["inference_stats"]["success"],
        "fail": stats["inference_stats"]["fail"],
        "compute_infer": stats["inference_stats"]["compute_infer"],
    }
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
