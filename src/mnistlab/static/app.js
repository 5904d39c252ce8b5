// The drawing page: pointer strokes on #pad, a prediction after each stroke (debounced),
// one card per model with its ten probabilities, and the 28x28 image the models receive.
"use strict";

const STROKE_WIDTH = 26;   // of 280 px: about MNIST's stroke once the digit is fitted into 20x20
const DEBOUNCE_MS = 150;   // a stroke that starts sooner than this cancels the pending request

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen");
const statusLine = document.getElementById("status");
const testButton = document.getElementById("test-digit");
const cards = new Map();   // model name -> its card element

let drawn = false;
let pending = null;        // the debounce timer
let sequence = 0;          // answers to older requests are dropped
let trueLabel = null;      // set while a test digit is on the pad

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
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
  trueLabel = null;
  clearPad();
  showSeen(null);
  for (const card of cards.values()) showProbabilities(card, null);
  setStatus("");
});

// --- talking to the server -----------------------------------------------------------------

async function askServer(url, options) {
  const response = await fetch(url, options);
  const answer = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

function predictPad() {
  if (!drawn) return;
  const mine = ++sequence;
  pad.toBlob(async (png) => {
    try {
      const answer = await askServer("/api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: png });
      if (mine === sequence) show(answer);
    } catch (error) {
      if (mine === sequence) setStatus(`Prediction failed: ${error.message}`, true);
    }
  }, "image/png");
}

testButton.addEventListener("click", async () => {
  clearTimeout(pending);
  const mine = ++sequence;
  try {
    const answer = await askServer("/api/test-digit");
    if (mine !== sequence) return;
    paintTestDigit(answer.preprocessed);
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
  showSeen(answer.preprocessed);
  for (const prediction of answer.predictions) {
    const card = cards.get(prediction.name);
    if (card) showProbabilities(card, prediction);
  }
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

function showProbabilities(card, prediction) {
  const probabilities = prediction ? prediction.probabilities : new Array(10).fill(0);
  card.querySelector(".digit").textContent = prediction ? String(prediction.digit) : "\u2013";
  const verdict = card.querySelector(".verdict");
  const judged = prediction && trueLabel !== null;
  verdict.textContent = judged ? (prediction.digit === trueLabel ? "right" : `wrong (it is ${trueLabel})`) : "";
  verdict.className = "verdict" + (judged ? (prediction.digit === trueLabel ? " right" : " wrong") : "");
  card.querySelectorAll(".bar-row").forEach((row, digit) => {
    const p = probabilities[digit];
    row.classList.toggle("top", prediction !== null && digit === prediction.digit);
    row.querySelector(".bar").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar").dataset.probability = String(p);
    row.querySelector(".value").textContent = prediction ? `${(100 * p).toFixed(1)}%` : "";
  });
  card.dataset.state = prediction ? "answered" : "empty";
}

function makeCard(model) {
  const card = document.getElementById("model-card").content.firstElementChild.cloneNode(true);
  card.dataset.name = model.name;
  card.querySelector(".model-name").textContent = model.name;
  const accuracy = model.val_acc === null ? "" : ` \u00b7 val. accuracy ${(100 * model.val_acc).toFixed(2)}%`;
  card.querySelector(".model-meta").textContent =
    `${model.model} \u00b7 ${model.parameters.toLocaleString("en")} parameters \u00b7 epoch ${model.epoch}${accuracy}`;
  const bars = card.querySelector(".bars");
  for (let digit = 0; digit < 10; digit++) {
    const row = document.createElement("li");
    row.className = "bar-row";
    row.innerHTML = '<span class="label"></span><span class="track"><span class="bar"></span></span><span class="value"></span>';
    row.querySelector(".label").textContent = String(digit);
    bars.append(row);
  }
  showProbabilities(card, null);
  return card;
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
  try {
    const answer = await askServer("/api/models");
    const container = document.getElementById("models");
    for (const model of answer.models) {
      const card = makeCard(model);
      cards.set(model.name, card);
      container.append(card);
    }
    if (answer.help) {
      const notice = document.getElementById("no-models");
      withCode(notice, answer.help);
      notice.hidden = false;
    }
  } catch (error) {
    setStatus(`Cannot reach the server: ${error.message}`, true);
  }
}

start();
