// The drawing page: pointer strokes on #pad, a prediction after each stroke (debounced), one
// card per model with its probabilities, the 28x28 image the models receive, controls that move
// that image, and what happens inside each network, all from one answer per change.
// The answers come from a backend: the server's API under `mnistlab serve`, or the forward pass
// in forward.js in the static site that `mnistlab site` writes (its site-data.js holds the models).
"use strict";

const STROKE_WIDTH = 26;   // of 280 px: about MNIST's stroke once the digit is fitted into 20x20
const DEBOUNCE_MS = 150;   // a stroke that starts sooner than this cancels the pending request

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen");
const statusLine = document.getElementById("status");
const testButton = document.getElementById("test-digit");
const answerStrip = document.getElementById("answers");
const moveInputs = { dx: document.getElementById("move-dx"), dy: document.getElementById("move-dy"),
                     angle: document.getElementById("move-angle") };
const cards = new Map();   // model name -> its card element
const insides = new Map(); // model name -> its "inside" section
const strips = new Map();  // model name -> its row in the answer strip
let study = null;          // the study's robustness curves, or null

let drawn = false;
let pending = null;        // the debounce timer
let sequence = 0;          // answers to older requests are dropped
let trueLabel = null;      // set while a test digit is on the pad
let source = null;         // what the answers are about: {kind: "pad", image} or {kind: "test", index}
let inFlight = false;      // one request at a time; a change meanwhile asks again when it ends
let askAgain = false;

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// 0.9997 -> "99.97%", 0.0003 -> "0.03%": enough digits that near-certain and near-impossible
// answers never both read as 100.0% and 0.0%.
function formatPercent(p) {
  const percent = 100 * p;
  if (percent < 1e-4) return "<0.0001%";
  if (100 - percent < 1e-4) return ">99.9999%";
  const far = percent < 1 ? percent : percent > 99 ? 100 - percent : null;
  const decimals = far === null ? 1 : Math.min(4, Math.max(1, Math.ceil(-Math.log10(far))));
  return `${percent.toFixed(decimals)}%`;
}

// --- drawing --------------------------------------------------------------------------------

function clearPad() {
  ink.fillStyle = "white";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

let last = null;

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  clearTimeout(pending);
  if (trueLabel !== null) { trueLabel = null; setStatus(""); }
  last = padPoint(event);
  ink.strokeStyle = ink.fillStyle = "#111";
  ink.lineWidth = STROKE_WIDTH;
  ink.lineCap = ink.lineJoin = "round";
  ink.beginPath();
  ink.arc(last[0], last[1], STROKE_WIDTH / 2, 0, 2 * Math.PI);
  ink.fill();
  drawn = true;
});

pad.addEventListener("pointermove", (event) => {
  if (last === null) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ink.beginPath();
  ink.moveTo(last[0], last[1]);
  for (const e of events.length ? events : [event]) {
    last = padPoint(e);
    ink.lineTo(last[0], last[1]);
  }
  ink.stroke();
});

function endStroke() {
  if (last === null) return;
  last = null;
  clearTimeout(pending);
  pending = setTimeout(predictPad, DEBOUNCE_MS);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearTimeout(pending);
  sequence += 1;
  source = null;
  trueLabel = null;
  clearPad();
  showSeen(null);
  for (const name of cards.keys()) showPrediction(name, null);
  setStatus("");
});

// --- moving the digit ----------------------------------------------------------------------

function move() {
  return { dx: Number(moveInputs.dx.value), dy: Number(moveInputs.dy.value), angle: Number(moveInputs.angle.value) };
}

function describeMove() {
  const { dx, dy, angle } = move();
  document.getElementById("move-dx-text").textContent = dx === 0 ? "none" : `${Math.abs(dx)} px ${dx > 0 ? "right" : "left"}`;
  document.getElementById("move-dy-text").textContent = dy === 0 ? "none" : `${Math.abs(dy)} px ${dy > 0 ? "down" : "up"}`;
  document.getElementById("move-angle-text").textContent =
    angle === 0 ? "none" : `${Math.abs(angle)}\u00b0 ${angle > 0 ? "anticlockwise" : "clockwise"}`;
  markStudy();
}

for (const input of Object.values(moveInputs)) {
  input.addEventListener("input", () => { describeMove(); ask(); });
}
document.getElementById("move-reset").addEventListener("click", () => {
  for (const input of Object.values(moveInputs)) input.value = "0";
  describeMove();
  ask();
});

// --- the backend: the server, or the models in this page ---------------------------------

async function askServer(url, options) {
  const response = await fetch(url, options);
  const answer = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

function query(extra = {}) {
  return "?" + new URLSearchParams({ inside: "1", ...move(), ...extra }).toString();
}

// The server's API. The pad's pixels go as a PNG, which the server preprocesses.
function serverBackend() {
  const png = (image) => new Promise((resolve) => {
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.toBlob(resolve, "image/png");
  });
  return {
    models: () => askServer("/api/models"),
    predict: async (image) => askServer("/api/predict" + query(),
      { method: "POST", headers: { "Content-Type": "image/png" }, body: await png(image) }),
    testDigit: (index) => askServer("/api/test-digit" + query(index === undefined ? {} : { index })),
    explain: null,   // the arithmetic of one unit needs the weights, which stay on the server
  };
}

const backend = window.MNISTLAB_SITE ? browserBackend(window.MNISTLAB_SITE, move) : serverBackend();

function predictPad() {
  if (!drawn) return;
  sequence += 1;
  source = { kind: "pad", image: ink.getImageData(0, 0, pad.width, pad.height) };
  ask();
}

// One request for the current source and move; changes while it runs are answered after it.
async function ask() {
  if (source === null) return;
  if (inFlight) { askAgain = true; return; }
  inFlight = true;
  const mine = sequence;
  const asked = source;
  try {
    const answer = asked.kind === "pad" ? await backend.predict(asked.image) : await backend.testDigit(asked.index);
    if (mine === sequence && asked === source) show(answer);
  } catch (error) {
    if (mine === sequence) setStatus(`Prediction failed: ${error.message}`, true);
  } finally {
    inFlight = false;
    if (askAgain) { askAgain = false; ask(); }
  }
}

testButton.addEventListener("click", async () => {
  clearTimeout(pending);
  const mine = ++sequence;
  try {
    const answer = await backend.testDigit();
    if (mine !== sequence) return;
    paintTestDigit(answer.preprocessed);
    source = { kind: "test", index: answer.index };
    trueLabel = answer.label;
    setStatus(`MNIST test image #${answer.index}: the true label is ${answer.label}.`);
    show(answer);
  } catch (error) {
    testButton.textContent = "No test digits";
    testButton.disabled = true;
    setStatus(error.message, true);
  }
});

// The test image goes on the pad enlarged and as dark ink on white, so it can be drawn over.
function paintTestDigit(pixels) {
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const context = small.getContext("2d");
  const image = context.createImageData(28, 28);
  pixels.flat().forEach((value, i) => {
    image.data.fill(255 - value, 4 * i, 4 * i + 3);
    image.data[4 * i + 3] = 255;
  });
  context.putImageData(image, 0, 0);
  clearPad();
  ink.imageSmoothingEnabled = true;
  ink.drawImage(small, 0, 0, pad.width, pad.height);
  drawn = true;
}

// --- showing the answers -------------------------------------------------------------------

function show(answer) {
  showSeen(answer.model_input);
  for (const prediction of answer.predictions) showPrediction(prediction.name, prediction);
  if (answer.blank) setStatus("Nothing drawn yet: the models are guessing from an empty image.");
  else if (statusLine.classList.contains("error")) setStatus("");
}

function showSeen(pixels) {
  const context = seen.getContext("2d");
  const image = context.createImageData(28, 28);
  const values = pixels ? pixels.flat() : new Array(28 * 28).fill(0);
  values.forEach((value, i) => {
    image.data.fill(value, 4 * i, 4 * i + 3);
    image.data[4 * i + 3] = 255;
  });
  context.putImageData(image, 0, 0);
}

function topThree(probabilities) {
  return probabilities.map((p, digit) => [p, digit]).sort((a, b) => b[0] - a[0]).slice(0, 3);
}

function showPrediction(name, prediction) {
  const card = cards.get(name);
  if (!card) return;
  const probabilities = prediction ? prediction.probabilities : new Array(10).fill(0);
  card.querySelector(".digit").textContent = prediction ? String(prediction.digit) : "\u2013";
  const verdict = card.querySelector(".verdict");
  const judged = prediction && trueLabel !== null;
  verdict.textContent = judged ? (prediction.digit === trueLabel ? "right" : `wrong (it is ${trueLabel})`) : "";
  verdict.className = "verdict" + (judged ? (prediction.digit === trueLabel ? " right" : " wrong") : "");
  const top3 = card.querySelector(".top3");
  top3.replaceChildren(...(prediction ? topThree(probabilities) : []).map(([p, digit]) => {
    const item = document.createElement("li");
    item.innerHTML = '<span class="top-digit"></span> <span class="top-p"></span>';
    item.querySelector(".top-digit").textContent = String(digit);
    item.querySelector(".top-p").textContent = formatPercent(p);
    return item;
  }));
  card.querySelectorAll(".bar-row").forEach((row, digit) => {
    const p = probabilities[digit];
    row.classList.toggle("top", prediction !== null && digit === prediction.digit);
    row.querySelector(".bar").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar").dataset.probability = String(p);
    row.querySelector(".value").textContent = prediction ? formatPercent(p) : "";
  });
  card.dataset.state = prediction ? "answered" : "empty";

  const strip = strips.get(name);
  strip.querySelector(".strip-digit").textContent = prediction ? String(prediction.digit) : "\u2013";
  strip.querySelector(".strip-p").textContent = prediction ? formatPercent(probabilities[prediction.digit]) : "";
  strip.dataset.state = card.dataset.state;

  showInside(insides.get(name), prediction && prediction.inside);
}

// --- inside the networks -------------------------------------------------------------------

// Ink for values: `signed` values go blue (negative) - white - red (positive), others black - white.
function colour(value, scale, signed) {
  const t = scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
  if (!signed) { const v = Math.round(255 * Math.max(0, t)); return [v, v, v]; }
  const [r, g, b] = t < 0 ? [47, 111, 219] : [192, 57, 43];
  const a = Math.abs(t);
  return [Math.round(255 + (r - 255) * a), Math.round(255 + (g - 255) * a), Math.round(255 + (b - 255) * a)];
}

// An array of numbers from the server: base64 of little-endian float32 (exact, and quick to read);
// from the models in the page, the Float32Array itself.
function floats(text) {
  if (typeof text !== "string") return text;
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  return Float32Array.from({ length: bytes.length / 4 }, (_, i) => view.getFloat32(4 * i, true));
}

// The i-th of the equal parts of `values` (map i of a stack of maps).
function part(values, count, i) {
  const size = values.length / count;
  return values.subarray(i * size, (i + 1) * size);
}

// One canvas of `values` laid out `cols` wide.
function heatmap(flat, cols, scale, signed, title, className) {
  const rows = Math.ceil(flat.length / cols);
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  canvas.className = className;
  canvas.title = title;
  const context = canvas.getContext("2d");
  const image = context.createImageData(cols, rows);
  flat.forEach((value, i) => {
    image.data.set(colour(value, scale, signed), 4 * i);
    image.data[4 * i + 3] = 255;
  });
  for (let i = flat.length; i < cols * rows; i++) image.data.set([245, 246, 248, 255], 4 * i);
  context.putImageData(image, 0, 0);
  return canvas;
}

function largest(values) {
  return values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

function stage(title, shape, className) {
  const figure = document.createElement("figure");
  figure.className = `stage ${className}`;
  const caption = document.createElement("figcaption");
  caption.textContent = title + " ";
  const size = document.createElement("span");
  size.className = "shape";
  size.textContent = shape.join("\u00d7");
  caption.append(size);
  const body = document.createElement("div");
  body.className = "stage-body";
  figure.append(caption, body);
  return [figure, body];
}

function showInside(section, inside) {
  if (!section) return;
  const stages = section.querySelector(".stages");
  section.dataset.state = inside ? "shown" : "empty";
  section.querySelector(".inside-empty").hidden = Boolean(inside);
  if (!inside) { stages.replaceChildren(); return; }
  section.querySelector(".shapes").textContent = inside.shapes.map((s) => s.join("\u00d7")).join(" \u2192 ");
  const parts = [];
  if (inside.filters) {
    const shape = inside.filters.shape, filters = floats(inside.filters.values);
    const [figure, body] = stage(`${inside.filters.layer}'s ${shape[0]} learned filters (blue negative, red positive)`, shape, "filters");
    const scale = largest(filters);
    for (let i = 0; i < shape[0]; i++) {
      body.append(heatmap(part(filters, shape[0], i), shape[2], scale, true, `filter ${i + 1}`, "map filter"));
    }
    parts.push(figure);
  }
  for (const layer of inside.layers) {
    if (layer.name === "flatten") continue;   // the last pooled maps, in one row
    const shape = layer.shape, values = floats(layer.values);
    const [figure, body] = stage(layer.title, shape, shape.length === 3 ? "layer maps" : "layer vector");
    figure.dataset.layer = layer.name;
    const scale = largest(values);
    if (shape.length === 3) {
      body.classList.add(`maps-${shape[1]}`);
      for (let i = 0; i < shape[0]; i++) {
        body.append(heatmap(part(values, shape[0], i), shape[2], scale, false, `${layer.name} map ${i + 1}`, "map"));
      }
    } else {
      const signed = values.some((v) => v < 0);
      const cols = values.length > 200 ? 50 : values.length;
      const peak = values.reduce((m, v) => Math.max(m, v), -Infinity);
      body.append(heatmap(values, cols, scale, signed, `${layer.name}: largest ${peak.toFixed(2)}`,
                          `strip${cols < values.length ? " strip-block" : ""}`));
      if (values.length <= 10) {
        const labels = document.createElement("div");
        labels.className = "strip-labels";
        values.forEach((_, i) => { const s = document.createElement("span"); s.textContent = String(i); labels.append(s); });
        body.append(labels);
      }
    }
    parts.push(figure);
  }
  if (inside.units) {
    const units = inside.units, count = units.indices.length;
    const weights = floats(units.weights), activations = floats(units.activations);
    const [figure, body] = stage(`what the ${count} most active ${units.layer} units look for: each one's 784 weights ` +
                                 "as 28\u00d728 (red: ink there raises it, blue: lowers it)", units.shape, "units");
    const scale = largest(weights);
    units.indices.forEach((index, i) => {
      const unit = document.createElement("div");
      unit.className = "unit";
      const picture = heatmap(part(weights, count, i), units.shape[2], scale, true, `unit ${index}`, "map weights");
      picture.dataset.unit = String(index);
      unit.append(picture);
      const note = document.createElement("span");
      note.textContent = `#${index}: ${activations[i].toFixed(2)}`;
      unit.append(note);
      body.append(unit);
    });
    parts.push(figure);
  }
  stages.replaceChildren(...parts);
}

// --- one unit's arithmetic -----------------------------------------------------------------

// The unit under a click or tap: a pixel of a conv feature map, or a first-layer unit of an MLP
// (in the fc1 strip, or one of the units whose weights are drawn). null elsewhere.
function unitAt(event) {
  const canvas = event.target.closest("canvas");
  const figure = canvas && canvas.closest(".stage");
  if (!figure) return null;
  const box = canvas.getBoundingClientRect();
  const x = Math.min(canvas.width - 1, Math.floor((event.clientX - box.left) * canvas.width / box.width));
  const y = Math.min(canvas.height - 1, Math.floor((event.clientY - box.top) * canvas.height / box.height));
  const layer = figure.dataset.layer;
  if (layer && layer.startsWith("conv")) {
    return { layer, channel: [...figure.querySelectorAll("canvas")].indexOf(canvas), y, x };
  }
  if (layer === "fc1" && !figure.closest(".inside").querySelector(".stage.filters")) {
    return { layer, unit: y * canvas.width + x };
  }
  if (figure.classList.contains("units")) return { layer: "fc1", unit: Number(canvas.dataset.unit) };
  return null;
}

function number(value) {
  return (value < 0 ? "\u2212" : "") + Math.abs(value).toFixed(4);
}

// What one unit computed for the digit now shown: the numbers it reads, its weights, their
// weighted sum, the bias, batch norm where the model has it, and the ReLU.
function showArithmetic(section, work) {
  const panel = section.querySelector(".arithmetic");
  panel.hidden = false;
  const title = document.createElement("h3");
  const lines = document.createElement("ol");
  lines.className = "sum";
  const line = (text) => { const item = document.createElement("li"); item.textContent = text; lines.append(item); };
  const pictures = document.createElement("div");
  pictures.className = "operands";
  const picture = (values, cols, signed, caption) => {
    const figure = document.createElement("figure");
    const label = document.createElement("figcaption");
    label.textContent = caption;
    figure.append(heatmap(values, cols, largest(values), signed, caption, "map operand"), label);
    pictures.append(figure);
  };
  if (work.kind === "conv") {
    const [channels, k] = work.windowShape;
    title.textContent = `${work.layer}, map ${work.channel + 1}, row ${work.y}, column ${work.x}: ` +
      `a ${k}\u00d7${k} window of ${work.input} times the kernel, over ${channels} channel${channels > 1 ? "s" : ""}`;
    for (let c = 0; c < channels; c++) {
      const from = channels > 1 ? ` (channel ${c + 1})` : "";
      picture(part(work.window, channels, c), k, work.input === "the input", `input window${from}`);
      picture(part(work.kernel, channels, c), k, true, `kernel${from}`);
    }
  } else {
    title.textContent = `${work.layer}, unit ${work.unit}: the 784 pixels of the input times its 784 weights`;
    picture(work.window, 28, true, "the input (normalized)");
    picture(work.kernel, 28, true, "its weights");
    picture(work.window.map((v, i) => v * work.kernel[i]), 28, true, "input \u00d7 weights");
  }
  line(`\u03a3 inputs \u00d7 weights = ${number(work.sum)}`);
  line(work.bias === null ? "no bias (the batch norm's shift takes its place)"
                          : `+ bias ${number(work.bias)} = ${number(work.sum + work.bias)}`);
  if (work.norm) {
    const n = work.norm;
    line(`batch norm: (${number(n.before)} \u2212 mean ${number(n.mean)}) / \u221a(variance ${number(n.variance)} + ` +
         `${n.eps}) \u00d7 ${number(n.weight)} + ${number(n.bias)} = ${number(n.after)}`);
  }
  const result = document.createElement("li");
  result.className = "relu";
  result.textContent = `ReLU: max(0, ${number(work.preactivation)}) = ${number(work.output)}`;
  result.dataset.output = String(work.output);
  lines.append(result);
  panel.replaceChildren(title, pictures, lines);
}

function explainClick(section, event) {
  const unit = unitAt(event);
  if (!unit) return;
  const panel = section.querySelector(".arithmetic");
  if (!backend.explain) {
    panel.hidden = false;
    withCode(panel, "One unit's arithmetic needs the weights in the page: open the static site that " +
                    "`mnistlab site` writes.");
    return;
  }
  const work = backend.explain(section.dataset.name, unit);
  if (work) showArithmetic(section, work);
}

// --- the study's curves --------------------------------------------------------------------

// The SVG namespace, as the HTML parser gives it: the page's files hold no address, not even this one.
const SVG = (() => { const t = document.createElement("template"); t.innerHTML = "<svg></svg>"; return t.content.firstChild.namespaceURI; })();
const LINE_COLOURS = ["#2f6fdb", "#c0392b", "#1f8a4c", "#8e44ad", "#d68910", "#17a2b8", "#5d6575"];

function svg(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.append(element);
  return element;
}

// A small chart of accuracy against shift or rotation: a line per study arm, a marker at the current move.
function chart(kind, curve) {
  const width = 240, height = 130, left = 34, right = 8, top = 8, bottom = 26;
  const xs = curve.values, lo = Math.min(...xs), hi = Math.max(...xs);
  const floor = Math.max(0, Math.floor(10 * Math.min(...curve.lines.flatMap((l) => l.mean))) / 10);
  const x = (v) => left + (hi > lo ? (v - lo) / (hi - lo) : 0.5) * (width - left - right);
  const y = (a) => top + (1 - (a - floor) / (1 - floor || 1)) * (height - top - bottom);
  const figure = document.createElement("figure");
  figure.className = "study-chart";
  figure.dataset.kind = kind;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": `the study's test accuracy against ${kind}` }, figure);
  svg("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, stroke: "#5d6575" }, root);
  svg("line", { x1: left, y1: top, x2: left, y2: height - bottom, stroke: "#5d6575" }, root);
  for (const a of [floor, (1 + floor) / 2, 1]) {
    svg("text", { x: left - 4, y: y(a) + 3, "text-anchor": "end", class: "tick" }, root).textContent = `${Math.round(100 * a)}%`;
  }
  for (const v of xs) {
    svg("text", { x: x(v), y: height - bottom + 11, "text-anchor": "middle", class: "tick" }, root).textContent = String(v);
  }
  svg("text", { x: (left + width - right) / 2, y: height - 3, "text-anchor": "middle", class: "axis" }, root)
    .textContent = `${kind} (${curve.unit})`;
  curve.lines.forEach((line, i) => {
    const points = xs.map((v, j) => `${x(v).toFixed(1)},${y(line.mean[j]).toFixed(1)}`).join(" ");
    const path = svg("polyline", { points, fill: "none", stroke: LINE_COLOURS[i % LINE_COLOURS.length], "stroke-width": 1.8 }, root);
    svg("title", {}, path).textContent = line.label;
  });
  const marker = svg("line", { class: "marker", y1: top, y2: height - bottom, stroke: "#1d2330", "stroke-dasharray": "3 2" }, root);
  marker.dataset.lo = lo; marker.dataset.hi = hi;
  figure.placeMarker = (value) => {
    const v = Math.max(lo, Math.min(hi, value));
    marker.setAttribute("x1", x(v)); marker.setAttribute("x2", x(v));
  };
  return figure;
}

function showStudy(answer) {
  const container = document.getElementById("study");
  study = answer && answer.robustness;
  if (!study) {
    const note = document.createElement("p");
    note.className = "note study-missing";
    note.textContent = answer && answer.results
      ? `the study's figure is not there yet: ${answer.results} has no shift and rotation curves.`
      : "the study's figure is not there yet: no study report found (make run writes one).";
    container.replaceChildren(note);
    return;
  }
  const parts = Object.entries(study).map(([kind, curve]) => chart(kind, curve));
  const legend = document.createElement("ul");
  legend.className = "legend";
  Object.values(study)[0].lines.forEach((line, i) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = LINE_COLOURS[i % LINE_COLOURS.length];
    item.append(swatch, line.label);
    legend.append(item);
  });
  container.replaceChildren(...parts, legend);
  markStudy();
}

// The study's summary and figures, where the answer holds them (the static site's).
function showStudyReport(answer) {
  const report = document.getElementById("study-report");
  if (!answer || !answer.summary) return;
  const rows = answer.summary.map((arm) => {
    const row = document.createElement("tr");
    const { mean, std, n } = arm.test_acc;
    for (const text of [arm.label, `${(100 * mean).toFixed(2)}% \u00b1 ${(100 * std).toFixed(2)}`, String(n)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  report.querySelector("tbody").replaceChildren(...rows);
  report.querySelector(".study-when").textContent = answer.finished ? `Run ${answer.finished}.` : "";
  report.querySelector(".figures").replaceChildren(...(answer.figures || []).map((file) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = file;
    image.alt = file.replace(/^.*\//, "").replace(/\.png$/, "").replaceAll("_", " ");
    image.loading = "lazy";
    const caption = document.createElement("figcaption");
    caption.textContent = image.alt;
    figure.append(image, caption);
    return figure;
  }));
  report.hidden = false;
}

// The dashed marker: how far the digit is moved now (shift: its distance in pixels).
function markStudy() {
  const { dx, dy, angle } = move();
  for (const figure of document.querySelectorAll(".study-chart")) {
    figure.placeMarker(figure.dataset.kind === "shift" ? Math.hypot(dx, dy) : Math.abs(angle));
  }
}

// --- building the page ---------------------------------------------------------------------

function makeCard(model) {
  const card = document.getElementById("model-card").content.firstElementChild.cloneNode(true);
  card.dataset.name = model.name;
  card.querySelector(".model-name").textContent = model.label || model.name;
  const accuracy = model.val_acc === null ? "" : ` \u00b7 val. accuracy ${(100 * model.val_acc).toFixed(2)}%`;
  card.querySelector(".model-meta").textContent =
    `${model.model} \u00b7 ${model.parameters.toLocaleString("en")} parameters \u00b7 epoch ${model.epoch}${accuracy} \u00b7 ${model.name}`;
  const bars = card.querySelector(".bars");
  for (let digit = 0; digit < 10; digit++) {
    const row = document.createElement("li");
    row.className = "bar-row";
    row.innerHTML = '<span class="label"></span><span class="track"><span class="bar"></span></span><span class="value"></span>';
    row.querySelector(".label").textContent = String(digit);
    bars.append(row);
  }
  return card;
}

function makeStripRow(model) {
  const row = document.createElement("li");
  row.dataset.name = model.name;
  row.innerHTML = '<span class="strip-digit"></span><span class="strip-name"></span><span class="strip-p"></span>';
  row.querySelector(".strip-name").textContent = model.label || model.name;
  return row;
}

function makeInside(model) {
  const section = document.getElementById("inside-model").content.firstElementChild.cloneNode(true);
  section.dataset.name = model.name;
  section.querySelector(".inside-title").textContent = `Inside ${model.label || model.name}`;
  section.querySelector(".stages").addEventListener("click", (event) => explainClick(section, event));
  return section;
}

// Text with `backquoted` commands -> nodes, without interpreting any of it as HTML.
function withCode(element, text) {
  text.split("`").forEach((part, i) => {
    if (i % 2) {
      const code = document.createElement("code");
      code.textContent = part;
      element.append(code);
    } else {
      element.append(part);
    }
  });
}

async function start() {
  clearPad();
  showSeen(null);
  describeMove();
  try {
    const answer = await backend.models();
    const container = document.getElementById("models");
    for (const model of answer.models) {
      cards.set(model.name, makeCard(model));
      strips.set(model.name, makeStripRow(model));
      insides.set(model.name, makeInside(model));
      container.append(cards.get(model.name));
      answerStrip.append(strips.get(model.name));
      document.getElementById("inside").append(insides.get(model.name));
      showPrediction(model.name, null);
    }
    if (answer.help) {
      const notice = document.getElementById("no-models");
      withCode(notice, answer.help);
      notice.hidden = false;
    }
    showStudy(answer.study);
    showStudyReport(answer.study);
    if (answer.test_digits === false) { testButton.textContent = "No test digits"; testButton.disabled = true; }
  } catch (error) {
    setStatus(`${window.MNISTLAB_SITE ? "Cannot load the models" : "Cannot reach the server"}: ${error.message}`, true);
  }
}

start();
