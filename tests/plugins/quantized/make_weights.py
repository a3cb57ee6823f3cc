"""Writes weights.safetensors of the `quantized` test plugin from the digits CNN's int8 models.

Reads `tests/fixtures/models/digits_cnn_int8_qop.onnx` (onnxruntime's QOperator quantization
of `digits_cnn.onnx`: nine QLinearConv with uint8 activations per tensor and symmetric int8
weights per output channel) and stores, per conv layer i (0..8):

  conv{i}.weight    U8  [O, C/g, kH, kW]  the int8 weights' two's complement bytes
  conv{i}.w_scale   F32 [O]               weight scales
  conv{i}.bias      I64 [O]               the int32 bias (in units of x_scale * w_scale)
  conv{i}.x_quant   F32 [2]               input scale, input zero point
  conv{i}.y_quant   F32 [2]               output scale, output zero point

and the float classifier `fc.weight` F32 [10, 128], `fc.bias` F32 [10] (the QOperator model
keeps its Gemm in float). It also quantizes that classifier for the plugin's all-int8 path
(`qgemm`), as onnxruntime's static quantizer would (MinMax over the calibration set):

  fc.qweight        U8  [10, 128]  int8, symmetric per output row: scale = max|w| / 127
  fc.qw_scale       F32 [10]
  fc.qbias          I64 [10]       round(bias / (x_scale * w_scale))
  fc.x_quant        F32 [2]        the pooled features' scale and zero point (ReLU6 output: 0..6)
  fc.y_quant        F32 [2]        the logits' scale and zero point, from their range on
                                   `digits_calib.npy` (the calibration set of the int8 models)

Run from the repository root with onnx, onnxruntime and numpy:
    python tests/plugins/quantized/make_weights.py
"""

import json
import struct

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

MODELS = "tests/fixtures/models/"
OUT = "tests/plugins/quantized/weights.safetensors"


def write_safetensors(path, tensors):
    dtypes = {np.dtype("uint8"): "U8", np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    model = onnx.load(MODELS + "digits_cnn_int8_qop.onnx")
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == 9, len(convs)
    out = {}
    for i, node in enumerate(convs):
        x, xs, xz, w, ws, wz, ys, yz, b = node.input
        assert init[w].dtype == np.int8 and not init[wz].any(), "symmetric int8 weights"
        out[f"conv{i}.weight"] = init[w].view(np.uint8)
        out[f"conv{i}.w_scale"] = init[ws].astype(np.float32)
        out[f"conv{i}.bias"] = init[b].astype(np.int64)
        out[f"conv{i}.x_quant"] = np.array([init[xs], init[xz]], dtype=np.float32)
        out[f"conv{i}.y_quant"] = np.array([init[ys], init[yz]], dtype=np.float32)
    w, b = init["m.fc.weight"], init["m.fc.bias"]
    out["fc.weight"], out["fc.bias"] = w.astype(np.float32), b.astype(np.float32)

    # The all-int8 classifier. Its input is the mean of ReLU6 outputs, in [0, 6].
    x_scale = np.float32(6.0 / 255.0)
    w_scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float32)
    out["fc.qweight"] = np.round(w / w_scale[:, None]).astype(np.int8).view(np.uint8)
    out["fc.qw_scale"] = w_scale
    out["fc.qbias"] = np.round(b / (x_scale * w_scale)).astype(np.int64)
    out["fc.x_quant"] = np.array([x_scale, 0], dtype=np.float32)
    # The logits' range on the calibration set: the float model up to its Gemm.
    float_model = onnx.load(MODELS + "digits_cnn.onnx")
    gemm = next(n for n in float_model.graph.node if n.op_type == "Gemm")
    float_model.graph.output.append(onnx.helper.make_tensor_value_info(gemm.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"])
    calib = np.load(MODELS + "digits_calib.npy")
    logits = np.concatenate([session.run([gemm.output[0]], {"input": calib[i : i + 1]})[0] for i in range(len(calib))])
    lo, hi = min(float(logits.min()), 0.0), max(float(logits.max()), 0.0)
    y_scale = np.float32((hi - lo) / 255.0)
    y_zero = np.float32(np.clip(np.round(-lo / y_scale), 0, 255))
    out["fc.y_quant"] = np.array([y_scale, y_zero], dtype=np.float32)
    write_safetensors(OUT, out)
    print(f"{OUT}: {len(out)} tensors; logits range on calibration [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
