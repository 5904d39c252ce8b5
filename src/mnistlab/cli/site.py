"""`mnistlab site`: the draw-a-digit page as a static folder, to open from disk or put on any static host (site.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab import site
from mnistlab.cli.flags import add_shared
from mnistlab.errors import UserError
from mnistlab.server import NO_MODEL_HELP, default_model_paths, load_served_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The folder works opened from disk (file://) and from any static host: nothing is fetched "
        "from elsewhere. A folder written before by `mnistlab site` is replaced; any other is refused."
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the folder to write")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="DIR",
        default=None,
        help="run directories or checkpoint files to put in the page; none: those `mnistlab serve` "
        "would serve (the best LeNet-5 and MLP of the latest study in reports/, else the newest runs in runs/)",
    )
    add_shared(parser, "data_dir")  # a few test digits for "try a test digit", when the data is prepared


def run(args: argparse.Namespace) -> int:
    paths = args.models if args.models else default_model_paths(Path("."))
    site.check_out(args.out)  # before the models are read: a wrong OUT fails at once
    models = load_served_models(paths)
    if not models:
        raise UserError(NO_MODEL_HELP.replace("restart `mnistlab serve`", "run `mnistlab site` again"))
    dataset = models[0].dataset
    results = Path("reports") / dataset / "results.json"
    tests = site.test_digits(dataset, args.data_dir)
    written = site.build_site(args.out, models, results, tests)
    for m in models:
        print(f"model {m.name}: {m.model_name}, {m.parameters:,} parameters ({m.path})")
    print(f"study: {results}" if results.is_file() else f"study: none ({results} does not exist)")
    print(f"test digits: {len(tests['labels'])}" if tests else "test digits: none (the test set is not prepared)")
    print(f"wrote {args.out}: {written['files']} files, {written['bytes']:,} bytes; open {args.out / 'index.html'}")
    return 0
