"""`mnistlab bench`: mnistlab's engine against the pipeline people usually write, on one machine.

The figures of the last run: benchmarks/RESULTS.md and RESULTS.json; how the `fast` recipe
was chosen: benchmarks/recipes.md.

The usual pipeline (usual.py) is torchvision's MNIST recipe done by hand; mnistlab's engine
keeps the dataset as one uint8 tensor and works on whole batches. Both train the same model
with the same optimizer settings (measure.py; memory.py measures the peak memory of a run,
timing.py times). The bench also times the `fast` recipe against the previous one and a short
study with and without stacked seeds. One `mnistlab bench` run writes RESULTS.md (render.py)
and RESULTS.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.bench.measure import Settings, bench
from mnistlab.bench.render import render, target_value
from mnistlab.engine import DEVICES, RECIPES, resolve_device, set_threads
from mnistlab.errors import UserError
from mnistlab.fileio import write_json, write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--device", default=d.device, choices=DEVICES, help="device (auto: cuda, then mps, then cpu)")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="the report; the JSON goes beside it with the suffix .json")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--recipe", default=d.recipe, choices=tuple(RECIPES), help="training recipe for the time-to-99%% runs")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds for the time-to-99%% runs")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repetitions of each training measurement")
    p.add_argument("--eval-repeats", type=int, default=d.eval_repeats, help="timed passes of mnistlab's evaluation")
    p.add_argument("--usual-samples", type=int, default=d.usual_samples, help="samples of the usual pipeline timed per repetition")
    p.add_argument("--warmup-batches", type=int, default=d.warmup_batches, help="untimed batches before timing")
    p.add_argument("--study-epochs", type=int, default=d.study_epochs,
                   help="epochs of the short study timed with and without stacked seeds (0: leave it out)")
    p.add_argument("--study-seeds", type=int, default=d.study_seeds, help="seeds per arm of that study")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in mnistlab's training and evaluation")
    p.add_argument("--compile", action="store_true", help="torch.compile mnistlab's model (needs a C compiler; slower to train here)")


def run(args: argparse.Namespace) -> int:
    from mnistlab.data import load_dataset

    for name in ("seeds", "repeats", "eval_repeats", "usual_samples", "study_seeds"):
        if getattr(args, name) <= 0:
            raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.study_epochs < 0:
        raise UserError(f"study-epochs must be >= 0 (0: no study), got {args.study_epochs}")
    if args.warmup_batches < 0:
        raise UserError(f"warmup-batches must be >= 0, got {args.warmup_batches}")
    set_threads(args.threads)
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise UserError(f"--out {out}: give the Markdown report's name; the JSON goes beside it")
    settings = Settings(
        device=args.device, repeats=args.repeats, eval_repeats=args.eval_repeats, usual_samples=args.usual_samples,
        warmup_batches=args.warmup_batches, recipe=args.recipe, seeds=args.seeds, amp=args.amp, compile=args.compile,
        study_epochs=args.study_epochs, study_seeds=args.study_seeds,
    )  # fmt: skip
    resolve_device(settings.device)  # a missing device fails before the data is loaded
    arrays = load_dataset("mnist", args.data_dir, log=lambda line: print(f"data: {line}"))
    result = bench(arrays, settings, log=lambda line: print(f"bench: {line}", flush=True))
    write_json(out.with_suffix(".json"), result)
    write_text(out, render(result))
    for t in result["targets"]:
        print(f"{t['what']}: {target_value(t)} (target {t['target']}: {'met' if t['met'] else 'NOT met'})")
    print(f"wrote {out} and {out.with_suffix('.json')} in {result['bench_seconds']:.0f} s")
    return 0
