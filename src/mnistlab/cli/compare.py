"""`mnistlab compare`: the whole study, LeNet-5 against the MLPs and the regularization ablation."""

from __future__ import annotations

import argparse
import sys
import time

from mnistlab import claims, data
from mnistlab.cli.flags import add_config_flags, add_shared, given_settings
from mnistlab.cluster import check_address, connect
from mnistlab.config import TrainConfig
from mnistlab.errors import UserError
from mnistlab.fileio import DiskFull
from mnistlab.report import plural
from mnistlab.runtime import resolve_device, set_threads
from mnistlab.study import (
    TRAIN_SETTINGS,
    StudyConfig,
    fmt_time,
    run_study,
    settings_suffix,
)

QUICK = {"seeds": 1, "epochs": 1, "experiments": claims.QUICK}  # --quick: a smoke test, into reports/<dataset>-quick


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The settings' flags are None unless given, so that `run` can tell which ones were.
    add_config_flags(p, StudyConfig, given_only=True)
    # The training settings of every run: the flags of `mnistlab train`, from the same settings (TrainConfig).
    group = p.add_argument_group("training settings of every run")
    add_config_flags(group, TrainConfig, given_only=True, names=TRAIN_SETTINGS)
    add_shared(p, "data_dir", "threads")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test into reports/<dataset>-quick: {plural(QUICK['seeds'], 'seed')} and {plural(QUICK['epochs'], 'epoch')}, "
        "unless --seeds or --epochs say otherwise, and the claims' experiments at toy size",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        default=None,
        help="train the runs on the workers of the Dask scheduler at ADDRESS (tcp://HOST:8786), one thread "
        "per run unless --threads says otherwise; each worker loads the data from its own data "
        "directory; needs: pip install 'mnistlab[cluster]' (default: train here, see --jobs)",
    )


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig of the flags given."""
    settings = given_settings(args, StudyConfig)
    train = given_settings(args, TrainConfig, names=TRAIN_SETTINGS)
    if args.quick:
        dataset = settings.get("dataset", StudyConfig.dataset)
        settings = {**QUICK, **settings}  # explicit flags win over --quick
        settings["out"] = settings.get("out") or f"reports/{dataset}{settings_suffix(train)}-quick"
    return StudyConfig(**settings, train=train)


def run(args: argparse.Namespace) -> int:
    config = study_config(args)
    set_threads(args.threads)
    resolve_device(config.device)  # fail before the long part

    if args.cluster is not None and config.jobs is not None:
        raise UserError(
            "--jobs is the number of runs trained here at once; with --cluster, the Dask workers "
            "decide it: give one of the two"
        )

    if args.cluster is not None:
        check_address(args.cluster)  # in seconds, before the data's checksums
    arrays = data.load_dataset(config.dataset, args.data_dir, log=lambda line: print(f"data: {line}"))
    out = config.directory
    cluster = None
    if args.cluster is not None:
        cluster = connect(args.cluster, config.dataset, args.threads or 1, log=lambda line: print(f"cluster: {line}"))
    started = time.perf_counter()
    try:
        run_study(config, arrays, cluster)
    except DiskFull as e:
        raise DiskFull(
            f"{e}; every finished epoch is kept in {out}/runs; free some space, then rerun the same command to resume"
        ) from None
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: every finished epoch is kept in {out}/runs; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        if cluster is not None:
            cluster.close()
    print(
        f"wrote {out}/results.json, {out}/REPORT.md and figures "
        f"({fmt_time(time.perf_counter() - started)} this invocation)"
    )
    return 0
