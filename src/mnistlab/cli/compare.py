"""`mnistlab compare`: the whole study, LeNet-5 against the MLPs and the regularization ablation."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab import data
from mnistlab.engine import DEVICES, resolve_device, set_threads
from mnistlab.errors import UserError
from mnistlab.fileio import write_json
from mnistlab.report import summarize, write_report
from mnistlab.study import VARIANTS, default_jobs, fmt_time, study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"), help="dataset")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MNISTLAB_DATA or ./data)")
    p.add_argument("--models", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"study arms to run, from: {', '.join(VARIANTS)}")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, into reports/<dataset>-quick")
    p.add_argument("--out", default=None, help="study directory (default: reports/<dataset>)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, in processes that share the CPU threads (default: 2 on a CPU "
                        "with 2 or more threads, where two small runs keep the cores busier than one; else 1)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    unknown = [m for m in args.models if m not in VARIANTS]
    if unknown:
        raise UserError(f"unknown study arm {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    seeds, epochs = (1, 2) if args.quick else (args.seeds, args.epochs)
    if seeds <= 0 or epochs <= 0:
        raise UserError(f"--seeds and --epochs must be positive, got {seeds} and {epochs}")
    set_threads(args.threads)
    out = Path(args.out or f"reports/{args.dataset}{'-quick' if args.quick else ''}")
    variants = [VARIANTS[m] for m in dict.fromkeys(args.models)]
    device = resolve_device(args.device)  # fail before the long part

    arrays = data.load_dataset(args.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    print(f"study: {len(variants)} arms x {seeds} seeds x {epochs} epochs on {args.dataset} -> {out}")
    jobs = args.jobs if args.jobs is not None else default_jobs(device)
    if jobs <= 0:
        raise UserError(f"--jobs must be positive, got {jobs}")
    results = study(variants, seeds, epochs, args.dataset, out, arrays, args.device, jobs)
    results["summary"] = summarize(results)
    write_json(out / "results.json", results)
    write_report(results, out, arrays)
    print(f"wrote {out}/results.json, {out}/REPORT.md and figures "
          f"({fmt_time(results['wall_seconds_this_invocation'])} this invocation)")  # fmt: skip
    return 0
