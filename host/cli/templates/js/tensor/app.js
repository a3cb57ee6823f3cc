// {{name}}: softmax over a [1, N] float32 tensor, sent as the Open Inference Protocol v2 input
// `input` or as a `.npy` body; the softmax runs on the host's kernel.
//
// Built by `edgeplug build` with ComponentizeJS against the WIT in wit/ (world `plugin`). A WIT
// `error` is thrown as a plain { code, message } object; `edgeplug build` sets
// globalThis.EDGEPLUG_PLUGIN to plugin.toml's name and version, the version's one home.
import { Tensor } from 'edgeplug:plugin/types@{{wit_version}}';
import { softmax } from 'edgeplug:plugin/ops@{{wit_version}}';

const error = (code, message) => ({ code, message });
const invalid = (message) => error('invalid-argument', message);

// A float32 little-endian C-order .npy body as a host tensor; the data is not converted here,
// the host takes the bytes as they are.
function npyTensor(body) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
  if (body.length < 10 || magic.some((b, i) => body[i] !== b)) {
    throw invalid("send the tensor 'input' or a float32 .npy body");
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

export const handler = {
  describe() {
    return {
      name: globalThis.EDGEPLUG_PLUGIN.name,
      version: globalThis.EDGEPLUG_PLUGIN.version,
      description: 'Softmax over a [1, N] float32 tensor (JavaScript)',
      inputs: [{ name: 'input', elementType: 'float32', shape: new BigInt64Array([1n, -1n]) }],
      outputs: [{ name: 'probabilities', elementType: 'float32', shape: new BigInt64Array([1n, -1n]) }],
    };
  },
  infer(request) {
    try {
      const named = request.tensors.find((t) => t.name === 'input');
      const x = named ? named.tensor : npyTensor(request.body);
      const shape = Array.from(x.shape());
      if (shape.length !== 2 || shape[0] !== 1) {
        throw error('shape-mismatch', `expected [1, N], got [${shape}]`);
      }
      const probabilities = softmax(x, -1);
      return {
        contentType: 'application/json',
        body: new TextEncoder().encode(JSON.stringify(Array.from(probabilities.toF32()))),
        tensors: [{ name: 'probabilities', tensor: probabilities }],
      };
    } catch (e) {
      // A host call's WIT error arrives as an exception carrying it as `payload`: answer it.
      throw e && e.payload ? e.payload : e;
    }
  },
};
