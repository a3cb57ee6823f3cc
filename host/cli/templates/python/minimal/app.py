"""{{name}}: doubles a JSON array of numbers with the host's `add` kernel.

Built by `edgeplug build` with componentize-py against the WIT in wit/ (world `plugin`);
`componentize-py -d wit -w plugin bindings bindings` writes the typed API to read.
"""

import json
import os
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


class Handler(exports.Handler):
    def describe(self) -> handler.PluginInfo:
        return handler.PluginInfo(
            name="{{name}}",
            version=VERSION,
            description="Doubles a JSON array of numbers (Python)",
            inputs=[],
            outputs=[],
        )

    def infer(self, request: handler.Request) -> handler.Response:
        # Return errors; do not let an exception escape: the component has no WASI, so an
        # uncaught exception traps without its traceback.
        try:
            values = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid(f"body is not JSON: {e}")
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise invalid("expected a JSON array of numbers")
        x = types.Tensor.from_f32([len(values)], [float(v) for v in values])
        doubled = ops.add(x, x).to_f32()
        return handler.Response("application/json", json.dumps(doubled).encode(), [])
