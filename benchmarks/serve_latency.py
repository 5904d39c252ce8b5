"""How long the page waits for an answer: POST /api/predict?inside=1 with a drawn digit, moved as
the sliders move it, against `mnistlab serve` started as its own process on 127.0.0.1.

    PYTHONPATH=src python benchmarks/serve_latency.py RUN_DIR... [--requests 200]

Prints the median and 95th percentile of the time from sending a request to having read and
parsed its answer (every layer of every model), on one kept-alive connection, as the page's
fetch does.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import time

from PIL import Image, ImageDraw


def drawn_seven() -> bytes:
    """A 7 as the page's pad sends it: 280x280 PNG, dark ink 26 px wide on white."""
    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line(
        [(84, 62), (196, 62), (162, 126), (126, 224)], fill=(17, 17, 17), width=26, joint="curve"
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="run directories to serve")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    command = [sys.executable, "-m", "mnistlab", "serve", "--port", "0", "--models", *args.models]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("serving on")):
            line = server.stdout.readline()
            if not line:
                raise SystemExit("mnistlab serve ended early:\n" + "".join(lines))
            lines.append(line)
        print("".join(lines[:-1]), end="")
        port = int(re.search(r":(\d+)/", lines[-1]).group(1))
        body, connection = drawn_seven(), http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times, size = [], 0
        for i in range(args.requests + 10):  # the first 10 warm up
            path = f"/api/predict?inside=1&dx={i % 13 - 6}&dy={(i // 13) % 13 - 6}&angle={5 * (i % 19) - 45}"
            start = time.perf_counter()
            connection.request("POST", path, body, {"Content-Type": "image/png"})
            response = connection.getresponse()
            data = response.read()
            answer = json.loads(data)
            elapsed = time.perf_counter() - start
            assert response.status == 200 and len(answer["predictions"]) == len(args.models), answer
            if i >= 10:
                times.append(elapsed * 1000)
                size = len(data)
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
    print(
        f"{len(times)} requests, answer {size / 1000:.0f} kB: median {statistics.median(times):.1f} ms, "
        f"p95 {p95:.1f} ms, min {times[0]:.1f} ms, max {times[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
