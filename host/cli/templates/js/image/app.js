// {{name}}: the mean brightness of a PNG image, decoded to grayscale here, in the sandbox, and
// averaged by the host's `globalAvgPool` kernel.
//
// The decoder is plain JavaScript, its inflate (RFC 1950/1951) included: 8-bit grayscale, RGB,
// palette, grayscale+alpha and RGBA, non-interlaced (what cameras and most tools write);
// anything else is refused with a clear error. RGB becomes gray as PIL's `convert("L")` does;
// alpha is ignored.
//
// Built by `edgeplug build` with ComponentizeJS against the WIT in wit/ (world `plugin`). A WIT
// `error` is thrown as a plain { code, message } object; `edgeplug build` sets
// globalThis.EDGEPLUG_PLUGIN to plugin.toml's name and version, the version's one home.
import { Tensor } from 'edgeplug:plugin/types@{{wit_version}}';
import { globalAvgPool } from 'edgeplug:plugin/ops@{{wit_version}}';

// 1 Mpixel at most: the inflated rows, their unfiltered copy, the gray bytes and their float32
// copy stay within the manifest's memory_mib beside the engine's own ~10 MiB.
const MAX_PIXELS = 1 << 20;
// Channels per pixel of each PNG colour type.
const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

const error = (code, message) => ({ code, message });
const invalid = (message) => error('invalid-argument', message);

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// Canonical Huffman code from code lengths (RFC 1951 section 3.2.2) as a lookup table indexed
// by the next `bits` input bits (least significant first, as deflate packs them): each entry
// is symbol << 4 | code length, 0 where no code matches. One lookup a symbol, not one step a
// bit: SpiderMonkey runs interpreted in the sandbox, and the decode loop is most of a PNG's time.
function huffman(lengths) {
  const counts = new Uint16Array(16);
  for (const l of lengths) counts[l]++;
  counts[0] = 0;
  let left = 1;
  for (let len = 1; len < 16; len++) {
    left = (left << 1) - counts[len];
    if (left < 0) throw invalid("the PNG's image data is corrupt (over-subscribed code)");
  }
  let bits = 1;
  lengths.forEach((l) => (bits = Math.max(bits, l)));
  const table = new Uint32Array(1 << bits);
  const next = new Uint16Array(16);
  for (let len = 1, code = 0; len < 16; len++) {
    code = (code + counts[len - 1]) << 1;
    next[len] = code;
  }
  lengths.forEach((l, symbol) => {
    if (!l) return;
    let code = next[l]++;
    let reversed = 0;
    for (let i = 0; i < l; i++, code >>= 1) reversed = (reversed << 1) | (code & 1);
    for (let fill = reversed; fill < table.length; fill += 1 << l) table[fill] = (symbol << 4) | l;
  });
  return { table, bits };
}

const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DIST_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
const FIXED_LITERALS = huffman(Uint8Array.from({ length: 288 }, (_, s) => (s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8)));
const FIXED_DISTANCES = huffman(new Uint8Array(30).fill(5));

// zlib-wrapped deflate data inflated into exactly `expected` bytes; more or fewer is an error,
// so a small file cannot inflate to more memory than its header promises.
function inflate(data, expected) {
  const corrupt = (why) => invalid(`the PNG's image data is corrupt (${why})`);
  if (data.length < 6 || (data[0] & 15) !== 8 || ((data[0] << 8) | data[1]) % 31 !== 0 || data[1] & 32) {
    throw corrupt('not a zlib stream');
  }
  const out = new Uint8Array(expected);
  let at = 0;
  let pos = 2;
  let bitBuffer = 0;
  let bitCount = 0;
  // Zero bits appended past the end so that a code can be looked up whole near it; reading
  // one of them means the data was truncated.
  let padding = 0;
  const need = (n) => {
    while (bitCount < n) {
      if (pos < data.length) {
        bitBuffer |= data[pos++] << bitCount;
      } else {
        padding += 8;
      }
      bitCount += 8;
    }
  };
  const drop = (n) => {
    bitBuffer >>>= n;
    bitCount -= n;
    if (bitCount < padding) throw corrupt('truncated');
  };
  const bits = (n) => {
    need(n);
    const value = bitBuffer & ((1 << n) - 1);
    drop(n);
    return value;
  };
  // Back to a byte boundary: the partial byte's rest is padding, whole bytes looked ahead at
  // go back to the input.
  const align = () => {
    drop(bitCount & 7);
    pos -= (bitCount - padding) >> 3;
    bitBuffer = 0;
    bitCount = 0;
    padding = 0;
  };
  const decode = ({ table, bits: width }) => {
    need(width);
    const entry = table[bitBuffer & ((1 << width) - 1)];
    if (!entry) throw corrupt('bad code');
    drop(entry & 15);
    return entry >> 4;
  };
  const dynamicCodes = () => {
    const literals = bits(5) + 257;
    const distances = bits(5) + 1;
    const codeLengths = new Uint8Array(19);
    const count = bits(4) + 4;
    for (let i = 0; i < count; i++) codeLengths[CODE_LENGTH_ORDER[i]] = bits(3);
    const lengthCode = huffman(codeLengths);
    const lengths = new Uint8Array(literals + distances);
    for (let i = 0; i < lengths.length; ) {
      const symbol = decode(lengthCode);
      if (symbol < 16) {
        lengths[i++] = symbol;
        continue;
      }
      let value = 0;
      let repeat;
      if (symbol === 16) {
        if (i === 0) throw corrupt('repeat with no previous length');
        value = lengths[i - 1];
        repeat = 3 + bits(2);
      } else {
        repeat = symbol === 17 ? 3 + bits(3) : 11 + bits(7);
      }
      if (i + repeat > lengths.length) throw corrupt('too many code lengths');
      lengths.fill(value, i, i + repeat);
      i += repeat;
    }
    return [huffman(lengths.subarray(0, literals)), huffman(lengths.subarray(literals))];
  };
  let last = 0;
  while (!last) {
    last = bits(1);
    const type = bits(2);
    if (type === 0) {
      align(); // a stored block starts at the next byte
      if (pos + 4 > data.length) throw corrupt('truncated');
      const len = data[pos] | (data[pos + 1] << 8);
      if (len !== (~(data[pos + 2] | (data[pos + 3] << 8)) & 0xffff)) throw corrupt('stored length');
      pos += 4;
      if (pos + len > data.length) throw corrupt('truncated');
      if (at + len > expected) throw corrupt('more data than the header says');
      out.set(data.subarray(pos, pos + len), at);
      pos += len;
      at += len;
    } else if (type === 1 || type === 2) {
      const [literals, distances] = type === 1 ? [FIXED_LITERALS, FIXED_DISTANCES] : dynamicCodes();
      for (;;) {
        const symbol = decode(literals);
        if (symbol < 256) {
          if (at >= expected) throw corrupt('more data than the header says');
          out[at++] = symbol;
        } else if (symbol === 256) {
          break;
        } else {
          const l = symbol - 257;
          if (l >= 29) throw corrupt('bad length');
          const len = LENGTH_BASE[l] + bits(LENGTH_EXTRA[l]);
          const d = decode(distances);
          if (d >= 30) throw corrupt('bad distance');
          const distance = DIST_BASE[d] + bits(DIST_EXTRA[d]);
          if (distance > at) throw corrupt('distance too far back');
          if (at + len > expected) throw corrupt('more data than the header says');
          for (let k = 0; k < len; k++, at++) out[at] = out[at - distance];
        }
      }
    } else {
      throw corrupt('bad block type');
    }
  }
  if (at !== expected) throw invalid(`the PNG's image data is ${at} bytes, its header needs ${expected}`);
  // The Adler-32 of the inflated data closes the stream, at the next byte boundary.
  align();
  if (pos + 4 > data.length) throw corrupt('truncated');
  let a = 1;
  let b = 0;
  for (let i = 0; i < out.length; i++) {
    a = (a + out[i]) % 65521;
    b = (b + a) % 65521;
  }
  const stored = ((data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]) >>> 0;
  if (stored !== ((b << 16) | a) >>> 0) throw corrupt('checksum');
  return out;
}

// Undoes the per-row filters (PNG spec section 9) into rows of width * bpp bytes: one loop per
// filter type, the first pixel (no left neighbour) apart, as this runs for every byte.
function unfilter(raw, width, height, bpp) {
  const stride = width * bpp;
  const out = new Uint8Array(height * stride);
  const zeros = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const kind = raw[y * (stride + 1)];
    const row = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const o = y * stride;
    const cur = out.subarray(o, o + stride);
    const up = y > 0 ? out.subarray(o - stride, o) : zeros;
    const first = Math.min(bpp, stride);
    if (kind === 0) {
      cur.set(row);
    } else if (kind === 1) {
      for (let i = 0; i < first; i++) cur[i] = row[i];
      for (let i = bpp; i < stride; i++) cur[i] = (row[i] + cur[i - bpp]) & 0xff;
    } else if (kind === 2) {
      for (let i = 0; i < stride; i++) cur[i] = (row[i] + up[i]) & 0xff;
    } else if (kind === 3) {
      for (let i = 0; i < first; i++) cur[i] = (row[i] + (up[i] >> 1)) & 0xff;
      for (let i = bpp; i < stride; i++) cur[i] = (row[i] + ((cur[i - bpp] + up[i]) >> 1)) & 0xff;
    } else if (kind === 4) {
      // Paeth with a = c = 0 predicts b
      for (let i = 0; i < first; i++) cur[i] = (row[i] + up[i]) & 0xff;
      for (let i = bpp; i < stride; i++) {
        const a = cur[i - bpp];
        const b = up[i];
        const c = up[i - bpp];
        const pa = Math.abs(b - c);
        const pb = Math.abs(a - c);
        const pc = Math.abs(a + b - 2 * c);
        cur[i] = (row[i] + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c)) & 0xff;
      }
    } else {
      throw invalid(`row ${y} has filter type ${kind}, not 0-4`);
    }
  }
  return out;
}

// PIL's `convert("L")` luma (ITU-R 601-2, 16-bit fixed point, rounded).
const luma = (r, g, b) => (19595 * r + 38470 * g + 7471 * b + 32768) >>> 16;

// { width, height, gray } of an 8-bit non-interlaced PNG.
function decodeGray(png) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (png.length < 8 || signature.some((b, i) => png[i] !== b)) {
    if (png[0] === 0xff && png[1] === 0xd8) throw error('unsupported', 'JPEG is not decoded by this plugin: send a PNG');
    throw invalid('not a PNG image');
  }
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let header = null;
  let palette = null;
  const compressed = [];
  let at = 8;
  for (;;) {
    if (at + 12 > png.length) throw invalid('the PNG is truncated (no IEND)');
    const length = view.getUint32(at);
    if (at + 12 + length > png.length) throw invalid('the PNG is truncated');
    const kindAndData = png.subarray(at + 4, at + 8 + length);
    const kind = String.fromCharCode(...kindAndData.subarray(0, 4));
    const data = kindAndData.subarray(4);
    if (crc32(kindAndData) !== view.getUint32(at + 8 + length)) {
      throw invalid(`the PNG's ${kind} chunk is corrupt (CRC)`);
    }
    at += 12 + length;
    if (kind === 'IHDR') {
      if (length !== 13) throw invalid("the PNG's IHDR is malformed");
      const h = new DataView(data.buffer, data.byteOffset, 13);
      header = { width: h.getUint32(0), height: h.getUint32(4), depth: data[8], colour: data[9], interlace: data[12] };
    } else if (kind === 'PLTE') {
      palette = data;
    } else if (kind === 'IDAT') {
      compressed.push(data);
    } else if (kind === 'IEND') {
      break;
    }
  }
  if (!header) throw invalid('the PNG has no IHDR');
  const { width, height, depth, colour, interlace } = header;
  if (width === 0 || height === 0 || width * height > MAX_PIXELS) {
    throw invalid(`${width}x${height} pixels: 1 to ${MAX_PIXELS} are taken`);
  }
  const bpp = CHANNELS[colour];
  if (depth !== 8 || !bpp || interlace !== 0) {
    throw error('unsupported', `PNG bit depth ${depth}, colour type ${colour}, interlace ${interlace}: this plugin decodes 8-bit, non-interlaced PNGs`);
  }
  const joined = new Uint8Array(compressed.reduce((n, c) => n + c.length, 0));
  compressed.reduce((offset, c) => (joined.set(c, offset), offset + c.length), 0);
  const pixels = unfilter(inflate(joined, height * (width * bpp + 1)), width, height, bpp);
  const gray = new Uint8Array(width * height);
  if (colour === 0) return { width, height, gray: pixels };
  if (colour === 4) {
    for (let i = 0; i < gray.length; i++) gray[i] = pixels[2 * i];
  } else if (colour === 3) {
    if (!palette) throw invalid('a palette PNG without a PLTE chunk');
    const entries = Math.floor(palette.length / 3);
    for (let i = 0; i < gray.length; i++) {
      const p = pixels[i];
      if (p >= entries) throw invalid('a pixel indexes past the palette');
      gray[i] = luma(palette[3 * p], palette[3 * p + 1], palette[3 * p + 2]);
    }
  } else {
    for (let i = 0; i < gray.length; i++) gray[i] = luma(pixels[bpp * i], pixels[bpp * i + 1], pixels[bpp * i + 2]);
  }
  return { width, height, gray };
}

export const handler = {
  describe() {
    return {
      name: globalThis.EDGEPLUG_PLUGIN.name,
      version: globalThis.EDGEPLUG_PLUGIN.version,
      description: 'Mean brightness (0 to 1) of a PNG image (JavaScript)',
      inputs: [],
      outputs: [],
    };
  },
  infer(request) {
    try {
      const { width, height, gray } = decodeGray(request.body);
      const pixels = Tensor.fromF32(new Uint32Array([1, 1, height, width]), Float32Array.from(gray));
      const [mean] = globalAvgPool(pixels).toF32();
      const answer = { width, height, brightness: mean / 255 };
      return {
        contentType: 'application/json',
        body: new TextEncoder().encode(JSON.stringify(answer)),
        tensors: [],
      };
    } catch (e) {
      // A host call's WIT error arrives as an exception carrying it as `payload`: answer it.
      throw e && e.payload ? e.payload : e;
    }
  },
};
