"""{{name}}: softmax over a [1, N] float32 tensor, sent as the Open Inference Protocol v2 input
`input` or as a `.npy` body; the softmax runs on the host's kernel.

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
from wit_world.imports import ops, types

# Read once, at build time: componentize-py runs this module's top level while it builds the
# component and keeps the result, so the version has one home, plugin.toml.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.toml"), "rb") as f:
    VERSION = tomllib.load(f)["version"]


def invalid(message: str) -> Err:
    """The WIT error `invalid-argument`: the gateway answers it as HTTP 400."""
    return Err(types.Error(types.ErrorCode.INVALID_ARGUMENT, message))


def npy_tensor(body: bytes) -> types.Tensor:
    """A float32 little-endian C-order .npy body as a host tensor; the data is not converted
    here, the host takes the bytes as they are."""
    if body[:6] != b"\x93NUMPY" or len(body) < 10:
        raise invalid("send the tensor 'input' or a float32 .npy body")
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



class Handler(exports.Handler):
    def describe(self) -> handler.PluginInfo:
        return handler.PluginInfo(
            name="{{name}}",
            version=VERSION,
            description="Softmax over a [1, N] float32 tensor (Python)",
            inputs=[types.TensorInfo("input", types.ElementType.FLOAT32, [1, -1])],
            outputs=[types.TensorInfo("probabilities", types.ElementType.FLOAT32, [1, -1])],
        )

    def infer(self, request: handler.Request) -> handler.Response:
        named = [t.tensor for t in request.tensors if t.name == "input"]
        x = named[0] if named else npy_tensor(request.body)
        shape = x.shape()
        if len(shape) != 2 or shape[0] != 1:
            raise Err(types.Error(types.ErrorCode.SHAPE_MISMATCH, f"expected [1, N], got {shape}"))
        probabilities = ops.softmax(x, -1)
        body = json.dumps(probabilities.to_f32()).encode()
        return handler.Response("application/json", body, [handler.NamedTensor("probabilities", probabilities)])
