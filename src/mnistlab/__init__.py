"""mnistlab: LeNet-5 versus an MLP on MNIST, and what regularization does to LeNet-5.

The library under the `mnistlab` command, for use from Python (the README shows it):

    from mnistlab import TrainConfig, fit, load_dataset
    history = fit(TrainConfig(model="lenet5", epochs=2), load_dataset("mnist"), "runs/lenet5")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it. They are imported when first used rather than here, so
# that the command line, which imports this package first, loads torch only for the commands
# that compute (`mnistlab data` and `mnistlab --help` do not).
API = {
    "load_dataset": "mnistlab.data",
    "create_model": "mnistlab.models",
    "MODELS": "mnistlab.models",
    "TrainConfig": "mnistlab.config",
    "fit": "mnistlab.engine",
    "load_model": "mnistlab.checkpoint",
    "evaluate_checkpoint": "mnistlab.evaluate",
    "StudyConfig": "mnistlab.study",
    "run_study": "mnistlab.study",
    "UserError": "mnistlab.errors",
}
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
