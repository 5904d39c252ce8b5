"""What idle and trickling clients take from `mnistlab serve`: the server's threads, memory and CPU,
and whether a plain `GET /api/models` still answers.

    PYTHONPATH=src python benchmarks/serve_connections.py [--idle 1000] [--trickle 400] [--json OUT]

The server runs in a child process (the mnistlab that PYTHONPATH names, so that two versions can
be compared), one untrained LeNet-5 served. Scenarios, one after the other, each on a fresh server:
  idle        --idle connections that connect and say nothing
  idle-files  260 idle connections to a server whose limit of open files is 200
  trickle     --trickle clients that send a request's head a byte every 4 s, for --seconds
Each reports, at its end, the server's threads, its resident and peak memory (VmRSS, VmHWM),
its CPU seconds over the scenario, and the GET's status and seconds (timeout 5 s), 6 s into the
scenario (every client connected) and at its end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = """\
import resource, sys
files = int(sys.argv[2])
if files:
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from mnistlab.server import load_served_models, make_server
server = make_server(load_served_models([sys.argv[1]]), port=0, test_set=lambda: None, log=None)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def start_server(run_dir: Path, files: int = 0) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(run_dir), str(files)], stdout=subprocess.PIPE, text=True
    )
    return process, int(process.stdout.readline())


def status(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "threads": int(fields["Threads"]),
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024,
    }


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def get_models(port: int) -> tuple[int | str, float]:
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = sock.recv(64)
        code = int(answer.split()[1]) if answer.startswith(b"HTTP/") else "no answer"
    except OSError as e:
        code = type(e).__name__
    return code, round(time.perf_counter() - start, 3)


def connect_many(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        socks.append(sock)
    return socks


def scenario(name: str, run_dir: Path, clients: int, seconds: float, trickle: bool, files: int = 0) -> dict:
    process, port = start_server(run_dir, files)
    try:
        time.sleep(0.5)
        cpu0, start = cpu_seconds(process.pid), time.monotonic()
        socks = connect_many(port, clients)
        head = b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        sent = 0
        peak_threads = 0
        during = None
        while time.monotonic() - start < seconds:
            if during is None and time.monotonic() - start > 6:  # every client still connected
                during = get_models(port)
            if trickle:
                for sock in socks:
                    try:
                        sock.send(head[sent : sent + 1])
                    except OSError:
                        pass
                sent += 1
            peak_threads = max(peak_threads, status(process.pid)["threads"])
            time.sleep(4.0 if trickle else 1.0)
        result = {
            "scenario": name,
            "clients": clients,
            "connected": len(socks),
            "seconds": seconds,
            **status(process.pid),
            "peak_threads": peak_threads,
            "cpu_seconds": round(cpu_seconds(process.pid) - cpu0, 2),
        }
        result["get_during"], result["get_at_end"] = during, get_models(port)
        for sock in socks:
            sock.close()
        return result
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--trickle", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each scenario lasts")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds every client's socket

    import mnistlab
    from mnistlab.checkpoint import save_checkpoint
    from mnistlab.models import create_model

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "lenet5"
        save_checkpoint(
            run_dir / "checkpoint.pt",
            model_name="lenet5",
            model_kwargs={},
            config={"model": "lenet5"},
            epoch=1,
            metrics=[{"epoch": 1, "val_acc": 0.1}],
            model_state=create_model("lenet5").state_dict(),
        )
        for name, clients, trickle, files in [
            ("idle", args.idle, False, 0),
            ("idle-files", 260, False, 200),
            ("trickle", args.trickle, True, 0),
        ]:
            result = scenario(name, run_dir, clients, args.seconds, trickle, files)
            result["mnistlab"] = str(Path(mnistlab.__file__).parent)
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
