"""{{name}}: the mean brightness of a PNG image, decoded to grayscale here, in the sandbox,
and averaged by the host's `global_avg_pool` kernel.

The decoder is plain Python over the standard library's zlib: 8-bit grayscale, RGB, palette,
grayscale+alpha and RGBA, non-interlaced (what cameras and most tools write); anything else
is refused with a clear error. RGB becomes gray as PIL's `convert("L")` does; alpha is ignored.

Built by `edgeplug build` with componentize-py against the WIT in wit/ (world `plugin`);
`componentize-py -d wit -w plugin bindings bindings` writes the typed API to read.
"""

import array
import json
import os
import struct
import tomllib
import zlib

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import handler
from wit_world.imports import ops, types

# Read once, at build time: componentize-py runs this module's top level while it builds the
# component and keeps the result, so the version has one home, plugin.toml.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.toml"), "rb") as f:
    VERSION = tomllib.load(f)["version"]

# 1 Mpixel at most: the inflated rows, their unfiltered copy, the gray bytes and their float32
# copy stay within the manifest's memory_mib beside the interpreter's own ~15 MiB.
MAX_PIXELS = 1 << 20
# Channels per pixel of each PNG colour type.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def invalid(message: str) -> Err:
    """The WIT error `invalid-argument`: the gateway answers it as HTTP 400."""
    return Err(types.Error(types.ErrorCode.INVALID_ARGUMENT, message))


def unsupported(message: str) -> Err:
    return Err(types.Error(types.ErrorCode.UNSUPPORTED, message))


def chunks(png: bytes):
    """(type, data) of each chunk, CRCs checked."""
    at = 8
    while at + 12 <= len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if len(data) != length or at + 12 + length > len(png):
            raise invalid("the PNG is truncated")
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        if zlib.crc32(kind + data) != crc:
            raise invalid(f"the PNG's {kind.decode('latin-1')} chunk is corrupt (CRC)")
        yield kind, data
        at += 12 + length
        if kind == b"IEND":
            return
    raise invalid("the PNG is truncated (no IEND)")


def unfilter(raw: bytes, width: int, height: int, bpp: int) -> bytearray:
    """Undoes the per-row filters (PNG spec section 9) into rows of width * bpp bytes."""
    stride = width * bpp
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                row[i] = (row[i] + prev[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        elif kind != 0:
            raise invalid(f"row {y} has filter type {kind}, not 0-4")
        out[y * stride : (y + 1) * stride] = row
        prev = row
    return out


def decode_gray(png: bytes):
    """(width, height, gray bytes) of an 8-bit non-interlaced PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        if png[:2] == b"\xff\xd8":
            raise unsupported("JPEG is not decoded by this plugin: send a PNG")
        raise invalid("not a PNG image")
    header, palette, compressed = None, None, []
    for kind, data in chunks(png):
        if kind == b"IHDR":
            if len(data) != 13:
                raise invalid("the PNG's IHDR is malformed")
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"PLTE":
            palette = data
        elif kind == b"IDAT":
            compressed.append(data)
    if header is None:
        raise invalid("the PNG has no IHDR")
    width, height, depth, colour, _, _, interlace = header
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise invalid(f"{width}x{height} pixels: 1 to {MAX_PIXELS} are taken")
    if depth != 8 or colour not in CHANNELS or interlace != 0:
        raise unsupported(f"PNG bit depth {depth}, colour type {colour}, interlace {interlace}: this plugin decodes 8-bit, non-interlaced PNGs")
    bpp = CHANNELS[colour]
    expected = height * (width * bpp + 1)
    inflater = zlib.decompressobj()
    try:
        # Bounded: a small file that inflates to gigabytes stops at what the header promises.
        raw = inflater.decompress(b"".join(compressed), expected)
    except zlib.error as e:
        raise invalid(f"the PNG's image data is corrupt: {e}")
    if len(raw) != expected:
        raise invalid(f"the PNG's image data is {len(raw)} bytes, its header needs {expected}")
    pixels = unfilter(raw, width, height, bpp)
    if colour == 0:
        return width, height, pixels
    if colour == 4:
        return width, height, pixels[0::2]
    if colour == 3:
        if palette is None:
            raise invalid("a palette PNG without a PLTE chunk")
        entries = len(palette) // 3
        if max(pixels) >= entries:
            raise invalid("a pixel indexes past the palette")
        gray = bytes(luma(palette[3 * i], palette[3 * i + 1], palette[3 * i + 2]) for i in range(entries))
        return width, height, pixels.translate(gray.ljust(256, b"\0"))
    r, g, b = pixels[0::bpp], pixels[1::bpp], pixels[2::bpp]
    return width, height, bytes(map(luma, r, g, b))


def luma(r: int, g: int, b: int) -> int:
    """PIL's `convert("L")` luma (ITU-R 601-2, 16-bit fixed point, rounded)."""
    return (19595 * r + 38470 * g + 7471 * b + 32768) >> 16


class Handler(exports.Handler):
    def describe(self) -> handler.PluginInfo:
        return handler.PluginInfo(
            name="{{name}}",
            version=VERSION,
            description="Mean brightness (0 to 1) of a PNG image (Python)",
            inputs=[],
            outputs=[],
        )

    def infer(self, request: handler.Request) -> handler.Response:
        width, height, gray = decode_gray(bytes(request.body))
        # float32 bytes in one copy (a Python list of floats would take 32 bytes a pixel)
        data = array.array("f", iter(gray)).tobytes()
        pixels = types.Tensor.from_bytes([1, 1, height, width], types.ElementType.FLOAT32, data)
        (mean,) = ops.global_avg_pool(pixels).to_f32()
        answer = {"width": width, "height": height, "brightness": mean / 255.0}
        return handler.Response("application/json", json.dumps(answer).encode(), [])
