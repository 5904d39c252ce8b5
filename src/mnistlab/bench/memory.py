"""Peak memory of a training run, measured in a fresh process so that nothing else counts."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mnistlab.config import TrainConfig
from mnistlab.engine import fit
from mnistlab.errors import UserError


def memory_child(npz: str, config_json: str, out_dir: str, threads: str) -> None:
    """Run in a fresh interpreter: one `fit` of `config_json` on the arrays in `npz`; print the peak RSS."""
    torch.set_num_threads(int(threads))
    with np.load(npz) as f:
        arrays = SimpleNamespace(**{k: f[k] for k in f.files})
    fit(
        TrainConfig.from_dict(json.loads(config_json)),
        arrays,
        Path(out_dir),
        log=lambda line: None,
        show_progress=False,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result = {"peak_rss_bytes": peak}
    if torch.cuda.is_available():
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


def peak_memory(arrays, config: TrainConfig) -> dict:
    """Peak RSS of a fresh process that loads the arrays and trains `config` (the whole `fit`, evaluation included)."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        npz = Path(tmp) / "arrays.npz"
        np.savez(npz, **{k: getattr(arrays, k) for k in ("train_images", "train_labels", "test_images", "test_labels")})
        code = "import sys; from mnistlab.bench.memory import memory_child; memory_child(*sys.argv[1:])"
        args = [
            sys.executable,
            "-c",
            code,
            str(npz),
            json.dumps(config.to_dict()),
            str(Path(tmp) / "run"),
            str(torch.get_num_threads()),
        ]
        done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"the memory measurement's training process failed: {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"config": config.to_dict(), "threads": torch.get_num_threads(), **result}
