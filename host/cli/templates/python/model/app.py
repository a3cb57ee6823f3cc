"""{{name}}: runs the ONNX model granted as `model` (model.onnx) on the host and answers its
first output and that output's argmax.

The input is a float32 tensor in the model's input shape (the Open Inference Protocol v2
input `input`, or a `.npy` body), or a grayscale image of any size as JSON,
`{"image": [[row], ...], "max": 255}`: scaled to [0, 1] by `max` and resized to the model's
16x16 by area averaging here, in the sandbox. The model shipped is a small handwritten-digit
CNN (16x16 grayscale in, 10 probabilities out).

Built by `edgeplug build` with componentize-py against the WIT in wit/ (world `plugin`);
`componentize-py -d wit -w plugin bindings bindings` writes the typed API to read.
"""

import ast
import json
import math
import os
import struct
import tomllib

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler
from wit_world.imports import model, types

# Read once, at build time: componentize-py runs this module's top level while it builds the
# component and keeps the result, so the version has one home, plugin.toml.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.toml"), "rb") as f:
    VERSION = tomllib.load(f)["version"]

# The model's input shape (the digit CNN's: one 16x16 grayscale image, NCHW).
INPUT_SHAPE = [1, 1, 16, 16]
# The largest JSON image taken, per side: parsing it is the sandbox's work and memory.
MAX_SIDE = 512


def invalid(message: str) -> Err:
    """The WIT error `invalid-argument`: the gateway answers it as HTTP 400."""
    return Err(types.Error(types.ErrorCode.INVALID_ARGUMENT, message))


def npy_tensor(body: bytes) -> types.Tensor:
    """A float32 little-endian C-order .npy body as a host tensor; the data is not converted
    here, the host takes the bytes as they are."""
    if body[:6] != b"\x93NUMPY" or len(body) < 10:
        raise invalid("send the tensor 'input', a float32 .npy body or a JSON image")
    major = body[6]
    if major == 1:
        (header_len,), start = struct.unpack("<H", body[8:10]), 10
    elif major in (2, 3) and len(body) >= 12:
        (header_len,), start = struct.unpack("<I", body[8:12]), 12
    else:
        raise invalid(f".npy version {major} is not supported")
    try:
        header = ast.literal_eval(body[start : start + header_len].decode("latin-1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise invalid(f"the .npy header is malformed: {e}")
    if descr != "<f4":
        raise Err(types.Error(types.ErrorCode.UNSUPPORTED, f"the .npy body is {descr}, not float32 ('<f4')"))
    if fortran or not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise invalid("the .npy body must be C-ordered with a valid shape")
    data = body[start + header_len :]
    if len(data) != 4 * math.prod(shape):
        raise invalid(f".npy data is {len(data)} bytes, shape {list(shape)} needs {4 * math.prod(shape)}")
    return types.Tensor.from_bytes(list(shape), types.ElementType.FLOAT32, data)


def area_weights(n_in: int, n_out: int) -> list:
    """For each output pixel, the source pixels it covers and their weights (the covered
    fraction of each over the area's size; they sum to 1)."""
    scale = n_in / n_out
    weights = []
    for o in range(n_out):
        start, end = o * scale, (o + 1) * scale
        row = []
        for i in range(math.floor(start), min(math.ceil(end), n_in)):
            overlap = min(i + 1.0, end) - max(float(i), start)
            if overlap > 0.0:
                row.append((i, overlap / scale))
        weights.append(row)
    return weights


def resize_area(pixels: list, h: int, w: int, out_h: int, out_w: int) -> list:
    """Area-average resize: each output pixel is the mean of the source area it covers."""
    wx, wy = area_weights(w, out_w), area_weights(h, out_h)
    across = [[sum(k * pixels[y][i] for i, k in ws) for ws in wx] for y in range(h)]
    return [sum(k * across[i][x] for i, k in ws) for ws in wy for x in range(out_w)]


def image_tensor(body: bytes) -> types.Tensor:
    """`{"image": [[...], ...], "max": M}`: rows of equal length, values in [0, M] (M defaults
    to 255), as the model's input tensor."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"body is not JSON: {e}")
    rows = doc.get("image") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise invalid('expected {"image": [[row], ...], "max": 255}')
    top = doc.get("max", 255)
    if isinstance(top, bool) or not isinstance(top, (int, float)) or not top > 0:
        raise invalid("max must be a positive number")
    width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    if not rows or width == 0 or len(rows) > MAX_SIDE or width > MAX_SIDE:
        raise invalid(f"the image must be 1 to {MAX_SIDE} rows of 1 to {MAX_SIDE} values")
    pixels = []
    for y, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise invalid(f"row {y} is not a list of {width} values")
        for x, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top:
                raise invalid(f"pixel ({x}, {y}) is not a number in [0, {top}]")
        pixels.append([v / top for v in row])
    out_h, out_w = INPUT_SHAPE[2], INPUT_SHAPE[3]
    return types.Tensor.from_f32(INPUT_SHAPE, resize_area(pixels, len(rows), width, out_h, out_w))


class Handler(exports.Handler):
    def describe(self) -> handler.PluginInfo:
        return handler.PluginInfo(
            name="{{name}}",
            version=VERSION,
            description="An ONNX model on the host: a float32 tensor or a JSON image in, "
            "its first output and argmax out (Python)",
            inputs=[types.TensorInfo("input", types.ElementType.FLOAT32, INPUT_SHAPE)],
            outputs=[types.TensorInfo("output", types.ElementType.FLOAT32, [1, -1])],
        )

    def infer(self, request: handler.Request) -> handler.Response:
        # Return errors; do not let an exception escape: the component has no WASI, so an
        # uncaught exception traps without its traceback.
        named = [t.tensor for t in request.tensors if t.name == "input"]
        if named:
            x = named[0]
        elif request.content_type.split(";")[0].strip().lower() == "application/json":
            x = image_tensor(request.body)
        else:
            x = npy_tensor(request.body)
        if x.element_type() != types.ElementType.FLOAT32:
            raise Err(types.Error(types.ErrorCode.UNSUPPORTED, "the input must be float32"))
        if x.shape() != INPUT_SHAPE:
            raise Err(types.Error(types.ErrorCode.SHAPE_MISMATCH, f"expected {INPUT_SHAPE}, got {x.shape()}"))
        # The host runs the network (its native backend, or tract for what that does not cover).
        outputs = model.Model.open("model").run([x])
        if not outputs:
            raise Err(types.Error(types.ErrorCode.INTERNAL, "the model has no output"))
        output = outputs[0]
        values = output.to_f32()
        argmax = max(range(len(values)), key=values.__getitem__) if values else None
        body = json.dumps({"output": values, "argmax": argmax}).encode()
        return handler.Response("application/json", body, [handler.NamedTensor("output", output)])
