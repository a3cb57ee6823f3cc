// {{name}}: runs the ONNX model granted as `model` (model.onnx) on the host and answers its
// first output and that output's argmax.
//
// The input is a float32 tensor in the model's input shape (the Open Inference Protocol v2
// input `input`, or a `.npy` body), or a grayscale image of any size as JSON,
// `{"image": [[row], ...], "max": 255}`: scaled to [0, 1] by `max` and resized to the model's
// 16x16 by area averaging here, in the sandbox. The model shipped is a small handwritten-digit
// CNN (16x16 grayscale in, 10 probabilities out).
//
// Built by `edgeplug build` with ComponentizeJS against the WIT in wit/ (world `plugin`). A WIT
// `error` is thrown as a plain { code, message } object; `edgeplug build` sets
// globalThis.EDGEPLUG_PLUGIN to plugin.toml's name and version, the version's one home.
import { Tensor } from 'edgeplug:plugin/types@{{wit_version}}';
import { Model } from 'edgeplug:plugin/model@{{wit_version}}';

// The model's input shape (the digit CNN's: one 16x16 grayscale image, NCHW).
const INPUT_SHAPE = [1, 1, 16, 16];
// The largest JSON image taken, per side: parsing it is the sandbox's work and memory.
const MAX_SIDE = 512;

const error = (code, message) => ({ code, message });
const invalid = (message) => error('invalid-argument', message);

// A float32 little-endian C-order .npy body as a host tensor; the data is not converted here,
// the host takes the bytes as they are.
function npyTensor(body) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
  if (body.length < 10 || magic.some((b, i) => body[i] !== b)) {
    throw invalid("send the tensor 'input', a float32 .npy body or a JSON image");
  }
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const major = body[6];
  let headerLen, start;
  if (major === 1) {
    [headerLen, start] = [view.getUint16(8, true), 10];
  } else if ((major === 2 || major === 3) && body.length >= 12) {
    [headerLen, start] = [view.getUint32(8, true), 12];
  } else {
    throw invalid(`.npy version ${major} is not supported`);
  }
  const header = String.fromCharCode(...body.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([\d,\s]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw invalid('the .npy header is malformed');
  if (descr[1] !== '<f4') throw error('unsupported', `the .npy body is ${descr[1]}, not float32 ('<f4')`);
  if (fortran[1] === 'True') throw invalid('the .npy body must be C-ordered');
  const dims = shape[1].split(',').map((d) => d.trim()).filter((d) => d !== '').map(Number);
  const data = body.subarray(start + headerLen);
  const want = 4 * dims.reduce((a, b) => a * b, 1);
  if (data.length !== want) {
    throw invalid(`.npy data is ${data.length} bytes, shape [${dims}] needs ${want}`);
  }
  return Tensor.fromBytes(new Uint32Array(dims), 'float32', data);
}

// For each output pixel, the source pixels it covers and their weights (the covered fraction
// of each over the area's size; they sum to 1).
function areaWeights(nIn, nOut) {
  const scale = nIn / nOut;
  const weights = [];
  for (let o = 0; o < nOut; o++) {
    const [start, end] = [o * scale, (o + 1) * scale];
    const row = [];
    for (let i = Math.floor(start); i < Math.min(Math.ceil(end), nIn); i++) {
      const overlap = Math.min(i + 1, end) - Math.max(i, start);
      if (overlap > 0) row.push([i, overlap / scale]);
    }
    weights.push(row);
  }
  return weights;
}

// Area-average resize: each output pixel is the mean of the source area it covers.
function resizeArea(pixels, h, w, outH, outW) {
  const [wx, wy] = [areaWeights(w, outW), areaWeights(h, outH)];
  const sum = (ws, at) => ws.reduce((acc, [i, k]) => acc + k * at(i), 0);
  const across = pixels.map((row) => wx.map((ws) => sum(ws, (i) => row[i])));
  const out = new Float32Array(outH * outW);
  wy.forEach((ws, o) => {
    for (let x = 0; x < outW; x++) out[o * outW + x] = sum(ws, (i) => across[i][x]);
  });
  return out;
}

// `{"image": [[...], ...], "max": M}`: rows of equal length, values in [0, M] (M defaults to
// 255), as the model's input tensor.
function imageTensor(body) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch (e) {
    throw invalid(`body is not JSON: ${e.message}`);
  }
  const rows = doc !== null && typeof doc === 'object' ? doc.image : undefined;
  if (!Array.isArray(rows)) throw invalid('expected {"image": [[row], ...], "max": 255}');
  const top = doc.max === undefined ? 255 : doc.max;
  if (typeof top !== 'number' || !(top > 0)) throw invalid('max must be a positive number');
  const width = Array.isArray(rows[0]) ? rows[0].length : 0;
  if (rows.length === 0 || width === 0 || rows.length > MAX_SIDE || width > MAX_SIDE) {
    throw invalid(`the image must be 1 to ${MAX_SIDE} rows of 1 to ${MAX_SIDE} values`);
  }
  const pixels = rows.map((row, y) => {
    if (!Array.isArray(row) || row.length !== width) throw invalid(`row ${y} is not a list of ${width} values`);
    return row.map((v, x) => {
      if (typeof v !== 'number' || !(v >= 0 && v <= top)) {
        throw invalid(`pixel (${x}, ${y}) is not a number in [0, ${top}]`);
      }
      return v / top;
    });
  });
  const resized = resizeArea(pixels, rows.length, width, INPUT_SHAPE[2], INPUT_SHAPE[3]);
  return Tensor.fromF32(new Uint32Array(INPUT_SHAPE), resized);
}

function infer(request) {
  const named = request.tensors.find((t) => t.name === 'input');
  let x;
  if (named) {
    x = named.tensor;
  } else if (request.contentType.split(';')[0].trim().toLowerCase() === 'application/json') {
    x = imageTensor(request.body);
  } else {
    x = npyTensor(request.body);
  }
  if (x.elementType() !== 'float32') throw error('unsupported', 'the input must be float32');
  const shape = Array.from(x.shape());
  if (shape.length !== INPUT_SHAPE.length || shape.some((d, i) => d !== INPUT_SHAPE[i])) {
    throw error('shape-mismatch', `expected [${INPUT_SHAPE}], got [${shape}]`);
  }
  // The host runs the network (its native backend, or tract for what that does not cover).
  const [output] = Model.open('model').run([x]);
  if (!output) throw error('internal', 'the model has no output');
  const values = Array.from(output.toF32());
  let argmax = values.length ? 0 : null;
  values.forEach((v, i) => {
    if (v > values[argmax]) argmax = i;
  });
  return {
    contentType: 'application/json',
    body: new TextEncoder().encode(JSON.stringify({ output: values, argmax })),
    tensors: [{ name: 'output', tensor: output }],
  };
}

export const handler = {
  describe() {
    return {
      name: globalThis.EDGEPLUG_PLUGIN.name,
      version: globalThis.EDGEPLUG_PLUGIN.version,
      description: 'An ONNX model on the host: a float32 tensor or a JSON image in, its first output and argmax out (JavaScript)',
      inputs: [{ name: 'input', elementType: 'float32', shape: new BigInt64Array(INPUT_SHAPE.map(BigInt)) }],
      outputs: [{ name: 'output', elementType: 'float32', shape: new BigInt64Array([1n, -1n]) }],
    };
  },
  infer(request) {
    try {
      return infer(request);
    } catch (e) {
      // A host call's WIT error arrives as an exception carrying it as `payload`: answer it.
      throw e && e.payload ? e.payload : e;
    }
  },
};
