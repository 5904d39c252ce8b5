"""`mnistlab bench`: time mnistlab's engine against the usual DataLoader pipeline; write benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab import data
from mnistlab.bench.measure import Settings, bench
from mnistlab.bench.render import render, target_value
from mnistlab.cli.flags import add_config_flags, add_shared, given_settings
from mnistlab.errors import UserError
from mnistlab.fileio import write_json, write_text
from mnistlab.runtime import resolve_device, set_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, Settings)
    add_shared(p, "data_dir", "threads")
    p.add_argument(
        "--out", default="benchmarks/RESULTS.md", help="the report; the JSON goes beside it with the suffix .json"
    )


def run(args: argparse.Namespace) -> int:
    settings = Settings(**given_settings(args, Settings))
    set_threads(args.threads)
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise UserError(f"--out {out}: give the Markdown report's name; the JSON goes beside it")
    gpu = gpu_figures(out.with_name("GPU.json"))
    resolve_device(settings.device)  # a missing device fails before the data is loaded
    arrays = data.load_dataset("mnist", args.data_dir, log=lambda line: print(f"data: {line}"))
    result = bench(arrays, settings, log=lambda line: print(f"bench: {line}", flush=True))
    write_json(out.with_suffix(".json"), result)
    write_text(out, render(result, gpu))
    for t in result["targets"]:
        print(f"{t['what']}: {target_value(t)} (target {t['target']}: {'met' if t['met'] else 'NOT met'})")
    print(f"wrote {out} and {out.with_suffix('.json')} in {result['bench_seconds']:.0f} s")
    return 0


def gpu_figures(path: Path) -> dict | None:
    """benchmarks/gpu.py's figures beside the report, from a machine with a GPU, for RESULTS.md; None without them."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: cannot read benchmarks/gpu.py's figures ({e}); move it away or run that script again"
        ) from None
