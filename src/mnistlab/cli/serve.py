"""`mnistlab serve`: a local web page to draw a digit on and watch the models answer (server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.flags import add_shared
from mnistlab.runtime import set_threads
from mnistlab.server import (
    NO_MODEL_HELP,
    default_model_paths,
    load_served_models,
    make_server,
    study_summary,
    test_set_loader,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="DIR",
        default=None,
        help="run directories or checkpoint files to serve; none: the best LeNet-5 and MLP of "
        "the latest study in reports/, else the newest runs in runs/",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; another exposes the page to the network"
    )
    parser.add_argument("--port", type=port_number, default=8000, help="port (0: any free port)")
    add_shared(parser, "data_dir")  # the test set of "try a test digit"


def port_number(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"must be a whole number in 0..65535 (0: any free port), not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    # A request is one image: torch's threads only contend for it (benchmarks/threads.json).
    set_threads(1)
    paths = args.models if args.models else default_model_paths(Path("."))
    models = load_served_models(paths)
    dataset = models[0].dataset if models else "mnist"
    study = study_summary(study_results(paths))
    server = make_server(models, args.host, args.port, test_set_loader(dataset, args.data_dir), study=study)
    for m in models:
        acc = f", val_acc {m.val_acc:.4f}" if m.val_acc is not None else ""
        print(f"model {m.name}: {m.model_name}, {m.parameters:,} parameters, epoch {m.epoch}{acc} ({m.path})")
    if not models:
        print(NO_MODEL_HELP)
    host, port = server.server_address[:2]
    print(f"serving on http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def study_results(paths: list) -> Path | None:
    """The results.json of the study whose runs (STUDY/runs/NAME) all the served models are; None if they
    are not one study's."""
    studies = set()
    for path in map(Path, paths):
        run_dir = path if path.is_dir() else path.parent
        studies.add(run_dir.resolve().parent.parent if run_dir.resolve().parent.name == "runs" else None)
    (study,) = studies if len(studies) == 1 else (None,)
    return None if study is None else study / "results.json"
