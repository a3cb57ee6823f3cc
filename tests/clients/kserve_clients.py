"""Drives an edgeplug gateway with KServe's Python clients (`kserve` from PyPI): the REST client
(v2 protocol, binary tensor data by default) and the gRPC client, on digits and on the image
classifier's reference tensors.

It asserts nothing itself: it prints what it saw as one JSON object on stdout, and the Rust
test (tests/tests/it/clients.rs) checks that against the reference outputs.

usage: kserve_clients.py HTTP_HOST:PORT GRPC_HOST:PORT FIXTURES_DIR
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
from kserve.inference_client import RESTConfig


def request(model, name, array):
    tensor = InferInput(name=name, shape=list(array.shape), datatype="FP32")
    tensor.set_data_from_numpy(array.astype(np.float32))
    return InferRequest(model_name=model, infer_inputs=[tensor])


def output(response, name):
    for out in response.outputs:
        if out.name == name:
            return out.as_numpy()
    raise KeyError(name)


async def main():
    http, grpc, fixtures = sys.argv[1], sys.argv[2], sys.argv[3]
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    rpc = InferenceGRPCClient(grpc)
    digits = np.load(f"{fixtures}/digits/digits_test.npy")
    photos = np.load(f"{fixtures}/imagenet/mobilenetv2_input.npy")
    seen = {"rest_digits": [], "grpc_digits": [], "rest_logits": [], "grpc_logits": []}
    for x in digits:
        x = x.reshape(1, 1, 16, 16)
        answer = await rest.infer(f"http://{http}", request("digits", "input", x), model_name="digits")
        seen["rest_digits"].append(int(np.argmax(output(answer, "probs"))))
        answer = await rpc.infer(request("digits", "input", x))
        seen["grpc_digits"].append(int(np.argmax(output(answer, "probs"))))
    for x in photos:
        x = x.reshape(1, 3, 224, 224)
        answer = await rest.infer(f"http://{http}", request("image-classifier", "input", x), model_name="image-classifier")
        seen["rest_logits"].append(output(answer, "logits").reshape(-1).tolist())
        answer = await rpc.infer(request("image-classifier", "input", x))
        seen["grpc_logits"].append(output(answer, "logits").reshape(-1).tolist())
    await rest.close()
    await rpc.close()
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
