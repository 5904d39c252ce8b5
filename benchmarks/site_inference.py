"""The static site's inference, two ways: forward.js (the page's own forward pass, from site-data.js)
against onnxruntime-web running the files `mnistlab export` writes. Measures each one's folder size
and the time to the first answer (from navigation start until both models have answered one digit)
in Debian's headless Chromium, desktop (1280x900) and phone-sized (390x844), from file:// and from a
local static server. Runs alternate between the ways, a fresh browser context each; medians.

    npm install onnxruntime-web            # in a scratch folder outside the repository
    python benchmarks/site_inference.py --ort SCRATCH/node_modules/onnxruntime-web/dist

Writes benchmarks/site_inference.json. The models are untrained LeNet-5 and the 500-150 MLP: the
sizes and times are those of the architectures, whatever the weights.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import save_model  # noqa: E402

from mnistlab import onnx_export, site  # noqa: E402
from mnistlab.server import load_served_models  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORTS = {
    "desktop 1280x900": {"viewport": {"width": 1280, "height": 900}},
    "phone 390x844": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}

ORT_PAGE = """<!doctype html><meta charset="utf-8"><title>ort</title>
<script src="ort.wasm.min.js"></script><script src="models.js"></script>{inline}
<script>
const bytes = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
(async () => {
  try {
    ort.env.wasm.numThreads = 1;
    if (window.ORT_WASM) {  // from file://: the runtime's module and binary from scripts, not fetched
      ort.env.wasm.wasmBinary = bytes(ORT_WASM);
      ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(new Blob([ORT_MJS], { type: "text/javascript" })) };
    }
    const input = new ort.Tensor("float32", new Float32Array(784).fill(0.5), [1, 1, 28, 28]);
    const logits = [];
    for (const name of Object.keys(MODELS)) {
      const session = await ort.InferenceSession.create(bytes(MODELS[name]));
      logits.push(Array.from((await session.run({ images: input })).logits.data));
    }
    window.DONE = { ms: performance.now(), logits };
  } catch (error) {
    window.DONE = { error: String(error) };
  }
})();
</script>"""

JS_FIRST_ANSWER = """async () => {
  const ready = performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 280;
  const pen = canvas.getContext("2d");
  pen.fillStyle = "white"; pen.fillRect(0, 0, 280, 280);
  pen.strokeStyle = "#111"; pen.lineWidth = 26; pen.lineCap = "round";
  pen.beginPath(); pen.moveTo(84, 62); pen.lineTo(196, 62); pen.lineTo(126, 224); pen.stroke();
  const start = performance.now();
  const answer = await backend.predict(pen.getImageData(0, 0, 280, 280));
  return { ms: ready + performance.now() - start, answers: answer.predictions.length };
}"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_folders(root: Path, ort_dist: Path) -> dict[str, Path]:
    runs = [save_model(root / "runs" / "lenet5-s0", "lenet5"), save_model(root / "runs" / "mlp-s0", "mlp")]
    models = load_served_models(runs)
    site.build_site(root / "forward-js", models)

    ort = root / "onnxruntime-web"
    ort.mkdir()
    onnx = {m.name: onnx_export.to_onnx(m.model, {"model": m.model_name}) for m in models}
    (ort / "models.js").write_text(
        "window.MODELS = " + json.dumps({k: base64.b64encode(v).decode() for k, v in onnx.items()}) + ";\n"
    )
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        shutil.copyfile(ort_dist / name, ort / name)
    (ort / "index.html").write_text(ORT_PAGE.replace("{inline}", ""))
    # From file:// the runtime cannot fetch its .wasm nor import its .mjs: both go in a script.
    inline = root / "onnxruntime-web-file"
    inline.mkdir()
    shutil.copyfile(ort / "models.js", inline / "models.js")
    shutil.copyfile(ort / "ort.wasm.min.js", inline / "ort.wasm.min.js")
    wasm = base64.b64encode((ort_dist / "ort-wasm-simd-threaded.wasm").read_bytes()).decode()
    mjs = (ort_dist / "ort-wasm-simd-threaded.mjs").read_text()
    (inline / "wasm.js").write_text(f"window.ORT_WASM = {json.dumps(wasm)};\nwindow.ORT_MJS = {json.dumps(mjs)};\n")
    (inline / "index.html").write_text(ORT_PAGE.replace("{inline}", '<script src="wasm.js"></script>'))
    return {"forward.js": root / "forward-js", "onnxruntime-web": ort, "onnxruntime-web, wasm inlined": inline}


def first_answer(browser, url: str, options: dict, kind: str) -> dict:
    context = browser.new_context(**options)
    try:
        page = context.new_page()
        page.goto(url)
        if kind == "forward.js":
            page.wait_for_selector(".model")
            return page.evaluate(JS_FIRST_ANSWER)
        page.wait_for_function("() => window.DONE !== undefined", timeout=60_000)
        return page.evaluate("window.DONE")
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort", type=Path, required=True, help="onnxruntime-web's dist folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("site_inference.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folders = make_folders(Path(tmp), args.ort)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tmp)
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        where = {
            "file://": lambda folder: (folder / "index.html").as_uri(),
            "http (static server)": lambda folder: (
                f"http://127.0.0.1:{server.server_address[1]}/{folder.name}/index.html"
            ),
        }
        cases = [
            (kind, place, view)
            for kind in folders
            for place in where
            for view in VIEWPORTS
            if not (kind == "onnxruntime-web, wasm inlined" and place != "file://")
        ]
        times: dict[tuple, list[float]] = {case: [] for case in cases}
        errors: dict[tuple, str] = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for _ in range(args.repeats):
                for case in cases:  # alternating: every case once per round
                    kind, place, view = case
                    kind_base = "forward.js" if kind == "forward.js" else "ort"
                    result = first_answer(browser, where[place](folders[kind]), VIEWPORTS[view], kind_base)
                    if "error" in result:
                        errors[case] = result["error"][:300]
                    else:
                        times[case].append(result["ms"])
            browser.close()
        server.shutdown()
        sizes = {kind: folder_bytes(folder) for kind, folder in folders.items()}
    report = {
        "machine": f"{platform.machine()}, {platform.system()}; Chromium headless (Debian), one wasm thread",
        "note": "other work was running on the machine (a shared 2-core CPU); medians of alternating runs",
        "repeats": args.repeats,
        "folder_bytes": sizes,
        "first_answer_ms": [
            {
                "inference": k,
                "from": p,
                "screen": v,
                "median": round(statistics.median(t), 1),
                "runs": [round(x, 1) for x in t],
            }
            for (k, p, v), t in times.items()
            if t
        ],
        "failed": [{"inference": k, "from": p, "screen": v, "error": e} for (k, p, v), e in errors.items()],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
