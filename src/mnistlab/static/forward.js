// mnistlab in the browser, for the static site (`mnistlab site`): the same three steps as the
// server, written out plainly.
//   1. toMnist: a drawing on the pad -> 28x28 grey levels, MNIST's recipe (preprocess.py):
//      find the ink, crop it, fit it into 20x20 (Lanczos, as Pillow resizes), centre its mass.
//   2. moveImage: rotate about the centre, then shift by whole pixels (transform.py).
//   3. layerOutputs: a model's layers one by one, keeping each stage (inside.py): conv, batch
//      norm, max-pool, ReLU, linear, in the order the model runs them.
// Numbers are kept as float32 where Python keeps them so (Math.fround), so that rounding to
// grey levels lands where Python's does.
"use strict";

const f32 = Math.fround;

// Python's round() and numpy's rint(): halves go to the even neighbour.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function median(values) {
  const sorted = Float64Array.from(values).sort();
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

// --- 1. the drawing -> MNIST's 28x28 (preprocess.py) ----------------------------------------

const FIELD = 28, BOX = 20;
const INK_THRESHOLD = 0.2, MIN_CONTRAST = 24, FIT_SIDE = 64, FIT_ROUNDS = 8, CLIP = 3.0;
const MIN_SPREAD = 2.0, NOISE_SIGMAS = 4.0, NOISE_SAMPLE = 65536, SHADE_FLOOR = 0.25;

// An opaque RGBA ImageData -> grey levels, as Pillow's convert("L") computes them.
function greyLevels(imageData) {
  const { width, height, data } = imageData;
  const grey = new Float32Array(width * height);
  for (let i = 0; i < grey.length; i++) {
    grey[i] = (data[4 * i] * 19595 + data[4 * i + 1] * 38470 + data[4 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return { width, height, values: grey };
}

// The drawing (ImageData of the pad: dark ink on white) -> Uint8Array(784), white ink on black.
function toMnist(imageData) {
  const grey = greyLevels(imageData);
  const { ink, contrast } = findInk(grey);
  if (contrast < MIN_CONTRAST) return new Uint8Array(FIELD * FIELD);
  const { width } = grey;
  const gain = f32(255 / ink.reduce((m, v) => Math.max(m, v), 0));   // the strongest ink becomes white
  for (let i = 0; i < ink.length; i++) ink[i] = f32(ink[i] * gain);

  // The bounding box of the strong ink, leaving out lone pixels (specks of noise).
  let strong = ink.map((v) => (v > INK_THRESHOLD * 255 ? 1 : 0));
  const near = beside(strong, width, grey.height);
  strong = strong.map((v, i) => v & near[i]);
  let top = Infinity, bottom = -1, left = Infinity, right = -1;
  strong.forEach((v, i) => {
    if (!v) return;
    const y = Math.floor(i / width), x = i % width;
    top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
  });
  if (bottom < 0) return new Uint8Array(FIELD * FIELD);
  const h = bottom - top + 1, w = right - left + 1;
  const digit = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) digit[y * w + x] = roundHalfEven(ink[(top + y) * width + left + x]);
  }
  // Fit into 20x20 keeping the aspect ratio, then centre by mass in 28x28.
  const scale = BOX / Math.max(h, w);
  const sw = Math.max(1, roundHalfEven(w * scale)), sh = Math.max(1, roundHalfEven(h * scale));
  return centreByMass(resizeLanczos(digit, w, h, sw, sh), sw, sh);
}

// Where `mask` holds next to a pixel: above, below, left or right of it.
function beside(mask, width, height) {
  const near = new Uint8Array(mask.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      near[i] = (y > 0 && mask[i - width]) || (y < height - 1 && mask[i + width]) ||
                (x > 0 && mask[i - 1]) || (x < width - 1 && mask[i + 1]) ? 1 : 0;
    }
  }
  return near;
}

// Grey levels -> how much ink lies on each pixel, and the strongest ink's contrast (find_ink).
function findInk(grey) {
  const { coefficients, darkInk } = fitPaper(grey);
  const paper = paperSurface(coefficients, grey.width, grey.height);
  const ink = paper.map((p, i) => (darkInk ? p - grey.values[i] : grey.values[i] - p));
  const floor = f32(NOISE_SIGMAS * noiseLevel(ink, grey.width, grey.height));
  for (let i = 0; i < ink.length; i++) if (ink[i] <= floor) ink[i] = 0;
  const contrast = ink.reduce((m, v) => Math.max(m, v), -Infinity);
  if (darkInk) {   // the fraction of the paper's light taken away: a stroke in the shade counts as much
    const least = Math.max(SHADE_FLOOR * paper.reduce((m, v) => Math.max(m, v), -Infinity), 1.0);
    for (let i = 0; i < ink.length; i++) ink[i] = f32(ink[i] / Math.max(paper[i], f32(least)));
  }
  return { ink, contrast };
}

// The paper's noise, from the pixels on the far side of the paper from the ink (noise_level).
function noiseLevel(ink, width, height) {
  const step = Math.max(1, roundHalfEven(Math.sqrt(ink.length / NOISE_SAMPLE)));
  const below = [];
  for (let y = 0; y < height; y += step) {
    for (let x = 0; x < width; x += step) if (ink[y * width + x] < 0) below.push(-ink[y * width + x]);
  }
  return below.length ? 1.4826 * f32(median(below)) : 0.0;
}

// The paper's brightness as a quadratic surface fitted to the pixels that are not ink (fit_paper).
function fitPaper(grey) {
  let { width, height, values } = grey;
  if (Math.max(width, height) > FIT_SIDE) {
    const scale = FIT_SIDE / Math.max(width, height);
    const w = Math.max(1, roundHalfEven(width * scale)), h = Math.max(1, roundHalfEven(height * scale));
    values = resizeBox(values, width, height, w, h);
    width = w; height = h;
  }
  const terms = surfaceTerms(width, height);
  const border = [];
  for (let x = 0; x < width; x++) border.push(values[x]);
  for (let x = 0; x < width; x++) border.push(values[(height - 1) * width + x]);
  for (let y = 0; y < height; y++) border.push(values[y * width]);
  for (let y = 0; y < height; y++) border.push(values[y * width + width - 1]);
  const start = f32(median(border));
  let fitted = new Float64Array(values.length).fill(start);
  let spread = Math.max(1.4826 * f32(median(border.map((v) => Math.abs(f32(v - start))))), MIN_SPREAD);
  let coefficients = null;
  for (let round = 0; round < FIT_ROUNDS; round++) {
    const limit = round === 0 ? f32(CLIP * spread) : CLIP * spread;
    const paper = values.map((v, i) => (Math.abs(round === 0 ? f32(v - fitted[i]) : v - fitted[i]) <= limit ? 1 : 0));
    coefficients = leastSquares(terms, values, paper);
    fitted = terms.map((row) => row.reduce((s, t, k) => s + t * coefficients[k], 0));
    const kept = [];
    values.forEach((v, i) => { if (paper[i]) kept.push(Math.abs(v - fitted[i])); });
    spread = Math.max(1.4826 * median(kept), MIN_SPREAD);
  }
  let dark = 0, light = 0;
  values.forEach((v, i) => {
    const beyond = v - fitted[i];
    dark += Math.max(-beyond - CLIP * spread, 0);
    light += Math.max(beyond - CLIP * spread, 0);
  });
  return { coefficients, darkInk: dark >= light };
}

// Pixel centres along an axis of n pixels, from -1 to 1 (the edges), in float32.
function centredAxis(n) {
  return Float32Array.from({ length: n }, (_, i) => f32(f32(f32(i + 0.5) * f32(2 / n)) - 1));
}

// Per pixel the terms 1, u, v, u², uv, v² (just 1 for an image under 8 pixels a side).
function surfaceTerms(width, height) {
  const us = centredAxis(width), vs = centredAxis(height), rows = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const u = us[x], v = vs[y];
      rows.push(Math.min(width, height) < 8 ? [1] : [1, u, v, f32(u * u), f32(u * v), f32(v * v)]);
    }
  }
  return rows;
}

// The least-squares coefficients over the chosen pixels, by the normal equations (A^T A) c = A^T b.
function leastSquares(terms, values, chosen) {
  const k = terms[0].length;
  const a = Array.from({ length: k }, () => new Array(k + 1).fill(0));
  terms.forEach((row, i) => {
    if (!chosen[i]) return;
    for (let r = 0; r < k; r++) {
      for (let c = 0; c < k; c++) a[r][c] += row[r] * row[c];
      a[r][k] += row[r] * values[i];
    }
  });
  for (let col = 0; col < k; col++) {   // Gaussian elimination with partial pivoting
    let pivot = col;
    for (let r = col + 1; r < k; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    [a[col], a[pivot]] = [a[pivot], a[col]];
    for (let r = 0; r < k; r++) {
      if (r === col || a[col][col] === 0) continue;
      const factor = a[r][col] / a[col][col];
      for (let c = col; c <= k; c++) a[r][c] -= factor * a[col][c];
    }
  }
  return a.map((row, r) => (row[r] === 0 ? 0 : row[k] / row[r]));
}

// The fitted surface at every pixel of the full image, in float32 as paper_surface computes it.
function paperSurface(coefficients, width, height) {
  const [c0, cu, cv, cuu, cuv, cvv] = [...coefficients, 0, 0, 0, 0, 0, 0].slice(0, 6).map(f32);
  const us = centredAxis(width), vs = centredAxis(height);
  const surface = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const v = vs[y], uFactor = f32(cu + f32(cuv * v)), rest = f32(c0 + f32(f32(cv + f32(cvv * v)) * v));
    for (let x = 0; x < width; x++) {
      const u = us[x];
      surface[y * width + x] = f32(f32(f32(uFactor * u) + rest) + f32(f32(cuu * u) * u));
    }
  }
  return surface;
}

// --- resizing as Pillow does it (Resample.c): separable, each axis a weighted sum --------------

function boxFilter(x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }
function sinc(x) { if (x === 0.0) return 1.0; x *= Math.PI; return Math.sin(x) / x; }
function lanczosFilter(x) { return x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; }

// For each output pixel along an axis: the first input pixel it reads and the normalized weights.
function resampleWeights(inSize, outSize, filter, support) {
  const scale = inSize / outSize, filterScale = Math.max(scale, 1.0), reach = support * filterScale;
  return Array.from({ length: outSize }, (_, out) => {
    const centre = (out + 0.5) * scale;
    const first = Math.max(Math.trunc(centre - reach + 0.5), 0);
    const last = Math.min(Math.trunc(centre + reach + 0.5), inSize);
    const weights = [];
    for (let x = first; x < last; x++) weights.push(filter((x - centre + 0.5) * (1.0 / filterScale)));
    const total = weights.reduce((s, w) => s + w, 0);
    return { first, weights: weights.map((w) => (total !== 0 ? w / total : w)) };
  });
}

// Resize in two passes, one along each axis, in the order Pillow picks: the vertical first when
// the height shrinks more than twice as much as the width. `pixels` uint8 ("L": weights in fixed
// point with 22 fractional bits, each pass rounded to 0..255) or float32 ("F": weights as they are).
function resize(values, width, height, outWidth, outHeight, filter, support) {
  const eightBit = values instanceof Uint8Array, ONE = 2 ** 22;
  const clip8 = (sum) => (sum >= ONE * 256 ? 255 : sum <= 0 ? 0 : Math.floor(sum / ONE));
  const plan = (inSize, outSize) => resampleWeights(inSize, outSize, filter, support).map(({ first, weights }) => ({
    first, weights: eightBit ? weights.map((w) => Math.trunc(w < 0 ? -0.5 + w * ONE : 0.5 + w * ONE)) : weights,
  }));
  // One pass: out[y][x] from the weighted pixels of its row (across) or its column (down).
  const pass = (input, w, h, across, outSize) => {
    const ow = across ? outSize : w, oh = across ? h : outSize;
    const out = eightBit ? new Uint8Array(ow * oh) : new Float32Array(ow * oh);
    plan(across ? w : h, outSize).forEach(({ first, weights }, o) => {
      for (let line = 0; line < (across ? h : w); line++) {
        let sum = eightBit ? ONE / 2 : 0;
        weights.forEach((k, j) => { sum += k * input[across ? line * w + first + j : (first + j) * w + line]; });
        out[across ? line * ow + o : o * ow + line] = eightBit ? clip8(sum) : sum;
      }
    });
    return out;
  };
  const horizontalFirst = !(height - outHeight > 0 && height - outHeight > (width - outWidth) * 2);
  let out = values;
  if (horizontalFirst) {
    if (outWidth !== width) out = pass(out, width, height, true, outWidth);
    if (outHeight !== height) out = pass(out, outWidth, height, false, outHeight);
  } else {
    if (outHeight !== height) out = pass(out, width, height, false, outHeight);
    if (outWidth !== width) out = pass(out, width, outHeight, true, outWidth);
  }
  return out;
}

function resizeBox(values, width, height, outWidth, outHeight) {
  return resize(values, width, height, outWidth, outHeight, boxFilter, 0.5);
}

function resizeLanczos(pixels, width, height, outWidth, outHeight) {
  return resize(pixels, width, height, outWidth, outHeight, lanczosFilter, 3.0);
}

// Place the patch in 28x28 so that its centre of mass lands on pixel (14, 14), as near as
// whole-pixel shifts allow without cutting the digit.
function centreByMass(patch, width, height) {
  let mass = 0, my = 0, mx = 0;
  patch.forEach((v, i) => { mass += v; my += Math.floor(i / width) * v; mx += (i % width) * v; });
  const field = new Uint8Array(FIELD * FIELD);
  if (mass <= 0) return field;
  const top = Math.min(Math.max(roundHalfEven(FIELD / 2 - my / mass), 0), FIELD - height);
  const left = Math.min(Math.max(roundHalfEven(FIELD / 2 - mx / mass), 0), FIELD - width);
  for (let y = 0; y < height; y++) field.set(patch.subarray(y * width, (y + 1) * width), (top + y) * FIELD + left);
  return field;
}

// --- 2. moving the 28x28 image (transform.py) ---------------------------------------------------

// Rotate `angle` degrees anticlockwise about the centre (bilinear, zeros outside, as torch's
// grid_sample with align_corners=False), then shift dx right and dy down; uint8 in, uint8 out.
function moveImage(image, dx, dy, angle) {
  let rotated = image;
  if (angle !== 0) {
    const radians = angle * Math.PI / 180, cos = f32(Math.cos(radians)), sin = f32(Math.sin(radians));
    const half = FIELD / 2, toGrid = f32(2 / FIELD);
    rotated = new Uint8Array(FIELD * FIELD);
    for (let y = 0; y < FIELD; y++) {
      for (let x = 0; x < FIELD; x++) {
        const px = f32(f32(x + 0.5) - half), py = f32(f32(y + 0.5) - half);
        // The input point each output pixel comes from (the inverse rotation), in grid units, then pixels.
        const gx = f32(f32(f32(cos * px) - f32(sin * py)) * toGrid);
        const gy = f32(f32(f32(sin * px) + f32(cos * py)) * toGrid);
        const ix = f32(f32(f32(gx + 1) * half) - 0.5), iy = f32(f32(f32(gy + 1) * half) - 0.5);
        const x0 = Math.floor(ix), y0 = Math.floor(iy), fx = f32(ix - x0), fy = f32(iy - y0);
        let value = 0;
        for (const [xx, yy, weight] of [[x0, y0, f32(f32(1 - fx) * f32(1 - fy))], [x0 + 1, y0, f32(fx * f32(1 - fy))],
                                        [x0, y0 + 1, f32(f32(1 - fx) * fy)], [x0 + 1, y0 + 1, f32(fx * fy)]]) {
          if (xx >= 0 && xx < FIELD && yy >= 0 && yy < FIELD) value = f32(value + f32(image[yy * FIELD + xx] * weight));
        }
        rotated[y * FIELD + x] = Math.min(255, Math.max(0, roundHalfEven(value)));
      }
    }
  }
  const moved = new Uint8Array(FIELD * FIELD);
  for (let y = 0; y < FIELD; y++) {
    for (let x = 0; x < FIELD; x++) {
      const fromY = y - dy, fromX = x - dx;
      if (fromY >= 0 && fromY < FIELD && fromX >= 0 && fromX < FIELD) {
        moved[y * FIELD + x] = rotated[fromY * FIELD + fromX];
      }
    }
  }
  return moved;
}

// --- 3. the networks (inside.py's stages) ---------------------------------------------------------

// uint8 pixels -> the input the models were trained on: (pixels / 255 - mean) / std.
function normalizeImage(image, mean, std) {
  return Float32Array.from(image, (v) => (v / 255 - mean) / std);
}

// Valid convolution, stride 1: out[o][y][x] = bias[o] + sum over c, i, j of w[o][c][i][j] * in[c][y+i][x+j].
function conv2d(input, [channels, height, width], layer) {
  const k = layer.kernel, outHeight = height - k + 1, outWidth = width - k + 1;
  const out = new Float32Array(layer.out * outHeight * outWidth);
  for (let o = 0; o < layer.out; o++) {
    for (let y = 0; y < outHeight; y++) {
      for (let x = 0; x < outWidth; x++) {
        let sum = layer.bias ? layer.bias[o] : 0;
        for (let c = 0; c < channels; c++) {
          for (let i = 0; i < k; i++) {
            for (let j = 0; j < k; j++) {
              sum += layer.weight[((o * channels + c) * k + i) * k + j] * input[(c * height + y + i) * width + x + j];
            }
          }
        }
        out[(o * outHeight + y) * outWidth + x] = sum;
      }
    }
  }
  return [out, [layer.out, outHeight, outWidth]];
}

// Batch norm in evaluation form: each channel standardized by its running statistics, then scaled and shifted.
function batchNorm2d(input, shape, layer) {
  const size = shape[1] * shape[2];
  const out = input.map((v, i) => {
    const c = Math.floor(i / size);
    return (v - layer.mean[c]) / Math.sqrt(layer.variance[c] + layer.eps) * layer.weight[c] + layer.bias[c];
  });
  return [out, shape];
}

// 2x2 max-pool, stride 2: each output is the largest of its four inputs.
function maxPool2d(input, [channels, height, width]) {
  const outHeight = Math.floor(height / 2), outWidth = Math.floor(width / 2);
  const out = new Float32Array(channels * outHeight * outWidth);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < outHeight; y++) {
      for (let x = 0; x < outWidth; x++) {
        const at = (i, j) => input[(c * height + 2 * y + i) * width + 2 * x + j];
        out[(c * outHeight + y) * outWidth + x] = Math.max(at(0, 0), at(0, 1), at(1, 0), at(1, 1));
      }
    }
  }
  return [out, [channels, outHeight, outWidth]];
}

function relu(input, shape) {
  return [input.map((v) => Math.max(v, 0)), shape];
}

// Fully connected: out[o] = bias[o] + sum over i of w[o][i] * in[i].
function linear(input, shape, layer) {
  const out = new Float32Array(layer.out);
  for (let o = 0; o < layer.out; o++) {
    let sum = layer.bias ? layer.bias[o] : 0;
    for (let i = 0; i < layer.in; i++) sum += layer.weight[o * layer.in + i] * input[i];
    out[o] = sum;
  }
  return [out, [layer.out]];
}

const LAYERS = { conv2d, batchnorm2d: batchNorm2d, maxpool2d: maxPool2d, relu, linear,
                 flatten: (input, shape) => [input, [input.length]] };

// A model's layers in order on one normalized image -> {stage name: {values, shape}}, named as
// inside.layer_outputs names them: conv1, pool1, ..., flatten, fc1, ... (the last is the logits).
// A conv stage is its maps after ReLU, at full size.
function layerOutputs(model, input) {
  let x = input, shape = [1, FIELD, FIELD], name = "input", convs = 0, fcs = 0;
  const stages = { input: { values: x, shape } };
  for (const layer of model.layers) {
    if (layer.type === "conv2d") name = `conv${++convs}`;
    else if (layer.type === "maxpool2d") { stages[name] = { values: relu(x, shape)[0], shape }; name = `pool${convs}`; }
    else if (layer.type === "linear") name = `fc${++fcs}`;
    else if (layer.type === "flatten") name = "flatten";
    [x, shape] = LAYERS[layer.type](x, shape, layer);
    stages[name] = { values: x, shape };
  }
  return stages;
}

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - top));
  const total = exps.reduce((s, v) => s + v, 0);
  return exps.map((v) => v / total);
}

// --- 4. the page's backend: answers shaped as the server's API gives them -----------------------

// Base64 of little-endian float32 (or of uint8 with `bytes`), as the site's data holds its numbers.
// A Float32Array reads the platform's byte order, which is little-endian wherever browsers run.
function fromBase64(text, bytes = false) {
  const binary = atob(text), raw = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) raw[i] = binary.charCodeAt(i);
  return bytes ? raw : new Float32Array(raw.buffer);
}

function decodeLayer(layer) {
  const decoded = { ...layer };
  for (const key of ["weight", "bias", "mean", "variance"]) {
    if (typeof layer[key] === "string") decoded[key] = fromBase64(layer[key]);
  }
  return decoded;
}

function rowsOf(image) {
  return Array.from({ length: FIELD }, (_, y) => Array.from(image.subarray(y * FIELD, (y + 1) * FIELD)));
}

// What the page shows inside a model (inside.look_inside): every stage after the input, and the
// first convolution's filters, or the weights of the MLP's ten most active first-layer units.
function insideOf(model, stages) {
  const inside = {
    shapes: Object.values(stages).map((s) => s.shape),
    layers: model.stages.map((s) => ({ ...s, values: stages[s.name].values })),
  };
  const first = model.layers.find((l) => l.type === "conv2d" || l.type === "linear");
  if (first.type === "conv2d" && first.in === 1) {
    inside.filters = { layer: "conv1", shape: [first.out, first.kernel, first.kernel], values: first.weight };
  } else if (first.type === "linear" && first.in === FIELD * FIELD) {
    const activations = stages.fc1.values;
    const units = Array.from(activations.keys()).sort((a, b) => activations[b] - activations[a] || a - b).slice(0, 10);
    const weights = new Float32Array(units.length * first.in);
    units.forEach((u, i) => weights.set(first.weight.subarray(u * first.in, (u + 1) * first.in), i * first.in));
    inside.units = { layer: "fc1", indices: units, activations: Float32Array.from(units, (u) => activations[u]),
                     shape: [units.length, FIELD, FIELD], weights };
  }
  return inside;
}

// The layer that makes stage `name` (conv2 -> the second conv2d), and the layer after it.
function layerNamed(model, name) {
  const kind = name.startsWith("conv") ? "conv2d" : "linear";
  const at = model.layers.map((l, i) => [l, i]).filter(([l]) => l.type === kind)[Number(name.replace(/\D/g, "")) - 1];
  return at ? [at[0], model.layers[at[1] + 1]] : [null, null];
}

// The backend of the static site: site-data.js's models, run here. `currentMove()` -> {dx, dy, angle}.
function browserBackend(site, currentMove) {
  const { mean, std } = site.normalization;
  const models = site.models.map((m) => ({ ...m, layers: m.layers.map(decodeLayer) }));
  const tests = site.test_digits &&
    { images: fromBase64(site.test_digits.images, true), labels: site.test_digits.labels };
  const latest = new Map();   // model name -> {model, stages} for the digit shown now

  function answer(image) {
    const { dx, dy, angle } = currentMove();
    const moved = moveImage(image, dx, dy, angle);
    const input = normalizeImage(moved, mean, std);
    const predictions = models.map((model) => {
      const stages = layerOutputs(model, input);
      latest.set(model.name, { model, stages });
      const names = Object.keys(stages);
      const probabilities = softmax(stages[names[names.length - 1]].values);
      const digit = probabilities.indexOf(Math.max(...probabilities));
      return { name: model.name, digit, probabilities, inside: insideOf(model, stages) };
    });
    return { preprocessed: rowsOf(image), blank: !image.some((v) => v > 0), move: { dx, dy, angle },
             model_input: rowsOf(moved), predictions };
  }

  // One unit's arithmetic for the digit shown: {layer, channel, y, x} of a conv map, or {layer, unit} of fc1.
  function explain(name, unit) {
    const shown = latest.get(name);
    if (!shown) return null;
    const { model, stages } = shown;
    const names = Object.keys(stages), before = stages[names[names.indexOf(unit.layer) - 1]];
    const [layer, next] = layerNamed(model, unit.layer);
    if (!layer || !before) return null;
    const work = { layer: unit.layer, input: names[names.indexOf(unit.layer) - 1] };
    let o;
    if (layer.type === "conv2d") {
      const [channels, height, width] = before.shape, k = layer.kernel, size = channels * k * k;
      o = unit.channel;
      Object.assign(work, { kind: "conv", channel: o, y: unit.y, x: unit.x, windowShape: [channels, k, k],
                            window: new Float32Array(size), kernel: layer.weight.subarray(o * size, (o + 1) * size) });
      for (let c = 0; c < channels; c++) {
        for (let i = 0; i < k; i++) {
          for (let j = 0; j < k; j++) {
            work.window[(c * k + i) * k + j] = before.values[(c * height + unit.y + i) * width + unit.x + j];
          }
        }
      }
      const [, h, w] = stages[unit.layer].shape;
      work.shown = stages[unit.layer].values[(o * h + unit.y) * w + unit.x];
    } else {
      o = unit.unit;
      Object.assign(work, { kind: "unit", unit: o, window: before.values,
                            kernel: layer.weight.subarray(o * layer.in, (o + 1) * layer.in) });
      work.shown = stages[unit.layer].values[o];
    }
    work.sum = work.window.reduce((s, v, i) => s + v * work.kernel[i], 0);
    work.bias = layer.bias ? layer.bias[o] : null;
    work.preactivation = work.sum + (work.bias || 0);
    if (next && next.type === "batchnorm2d") {
      const raw = work.preactivation;
      const after = (raw - next.mean[o]) / Math.sqrt(next.variance[o] + next.eps) * next.weight[o] + next.bias[o];
      work.norm = { before: raw, after, mean: next.mean[o], variance: next.variance[o], eps: next.eps,
                    weight: next.weight[o], bias: next.bias[o] };
      work.preactivation = after;
    }
    work.output = Math.max(0, work.preactivation);
    work.input = ["input", "flatten"].includes(work.input) ? "the input" : `${work.input}'s maps`;
    return work;
  }

  function testDigit(index) {
    if (!tests) throw new Error("this site holds no test digits (it was built without the test set)");
    const i = index === undefined ? Math.floor(Math.random() * tests.labels.length) : index;
    const image = tests.images.slice(i * FIELD * FIELD, (i + 1) * FIELD * FIELD);
    return { index: i, label: tests.labels[i], ...answer(image) };
  }

  return {
    models: async () => ({ models: site.models.map(({ layers, stages, ...described }) => described), help: site.help,
                           study: site.study, test_digits: Boolean(tests) }),
    predict: async (image) => answer(toMnist(image)),
    testDigit: async (index) => testDigit(index),
    explain,
  };
}
