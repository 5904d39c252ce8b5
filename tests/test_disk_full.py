"""A full disk (here: a file-size limit, RLIMIT_FSIZE, with SIGXFSZ ignored, in a child process) ends
`train`, `compare` and `export` with one line and exit 2, and damages nothing already on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnistlab.checkpoint import load_checkpoint

TESTS = Path(__file__).parent
SRC = Path(__file__).parents[1] / "src"

# Runs the command on synthetic data; the file-size limit comes after the first epoch's files
# (format_epoch makes the epoch's line once they are written), or at once with LIMIT_NOW.
CHILD = """\
import os, resource, signal, sys
import pytest, synthetic
import mnistlab.engine
from mnistlab.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
synthetic.use_synthetic_data(pytest.MonkeyPatch(), int(os.environ.get("N_TRAIN", 600)), 200)
limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
if os.environ.get("LIMIT_NOW"):
    limit()
else:
    format_epoch = mnistlab.engine.format_epoch

    def limited_after_first_epoch(*args):
        limit()
        return format_epoch(*args)

    mnistlab.engine.format_epoch = limited_after_first_epoch
raise SystemExit(main(sys.argv[1:]))
"""


def run_limited(args: list[str], cwd: Path, now: bool = False, n_train: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        "N_TRAIN": str(n_train),
    }
    if now:
        env["LIMIT_NOW"] = "1"
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def test_train_that_finds_no_room_says_so_and_keeps_the_last_epoch(tmp_path):
    done = run_limited(["train", "--epochs", "3", "--batch-size", "32", "--val-size", "100", "--out", "run"], tmp_path)
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("mnistlab train: error: file size limit exceeded writing run/checkpoint.pt; ")
    assert "epoch 1 is kept" in line and "--resume run" in line
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_compare_that_finds_no_room_says_so_in_one_line(tmp_path):
    done = run_limited(
        [
            "compare",
            "--models",
            "mlp-small",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--jobs",
            "1",
            "--no-stack",
            "--out",
            "study",
        ],
        tmp_path,
        n_train=5400,
    )
    assert done.returncode == 2
    line = one_line(done)
    assert "file size limit exceeded writing study/runs/mlp-small-e2-s0/checkpoint.pt" in line
    assert "every finished epoch is kept" in line
    assert load_checkpoint(tmp_path / "study" / "runs" / "mlp-small-e2-s0")["epoch"] == 1


def test_export_that_finds_no_room_says_so_and_leaves_nothing(tmp_path):
    pytest.importorskip("onnxruntime")
    from synthetic import save_model

    save_model(tmp_path / "run", "mlp-small")
    done = run_limited(["export", "run", "--onnx", "model.onnx"], tmp_path, now=True)
    assert done.returncode == 2
    line = one_line(done)
    assert "file size limit exceeded writing model.onnx; nothing was written" in line
    assert os.listdir(tmp_path) == ["run"]
