// {{name}}: doubles a JSON array of numbers with the host's `add` kernel.
//
// Built by `edgeplug build` with ComponentizeJS against the WIT in wit/ (world `plugin`). A WIT
// `error` is thrown as a plain { code, message } object; `edgeplug build` sets
// globalThis.EDGEPLUG_PLUGIN to plugin.toml's name and version, the version's one home.
import { Tensor } from 'edgeplug:plugin/types@{{wit_version}}';
import { add } from 'edgeplug:plugin/ops@{{wit_version}}';

const invalid = (message) => ({ code: 'invalid-argument', message });

export const handler = {
  describe() {
    return {
      name: globalThis.EDGEPLUG_PLUGIN.name,
      version: globalThis.EDGEPLUG_PLUGIN.version,
      description: 'Doubles a JSON array of numbers (JavaScript)',
      inputs: [],
      outputs: [],
    };
  },
  infer(request) {
    let values;
    try {
      values = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(request.body));
    } catch (e) {
      throw invalid(`body is not JSON: ${e.message}`);
    }
    if (!Array.isArray(values) || !values.every((v) => typeof v === 'number')) {
      throw invalid('expected a JSON array of numbers');
    }
    try {
      const x = Tensor.fromF32(new Uint32Array([values.length]), new Float32Array(values));
      const doubled = Array.from(add(x, x).toF32());
      return {
        contentType: 'application/json',
        body: new TextEncoder().encode(JSON.stringify(doubled)),
        tensors: [],
      };
    } catch (e) {
      // A host call's WIT error arrives as an exception carrying it as `payload`: answer it.
      throw e && e.payload ? e.payload : e;
    }
  },
};
