"""Settings that describe themselves: a setting's default, help and allowed values, stated once.

A configuration dataclass (engine.TrainConfig, study.StudyConfig, bench.measure.Settings)
declares its fields with `option()`; a setting that several commands share is an `Option`
constant (DEVICE and THREADS below, datasets.DATASET, data.DATA_DIR), whose `field()` the
dataclasses use. The command line builds its flags from these (cli/flags.py), so a flag's
default and help cannot drift from the setting it sets, nor from the same flag elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One setting. `help` leaves the default out: whoever shows it adds "(default: ...)"."""

    default: object
    help: str
    choices: tuple | None = None
    type: type | None = None  # what a given value is converted to; None: the field's annotation
    metavar: str | None = None
    default_text: str | None = None  # the default in words, where the value alone says too little

    def field(self) -> dataclasses.Field:
        """A dataclass field with this default, carrying this option."""
        return dataclasses.field(default=self.default, metadata={"option": self})

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, tuple):
            return " ".join(map(str, self.default))
        return str(self.default)


def option(default, help: str, **kwargs) -> dataclasses.Field:
    """A dataclass field that is a setting: `option(10, "number of epochs")`; kwargs as in Option."""
    return Option(default, help, **kwargs).field()


def option_of(field: dataclasses.Field) -> Option | None:
    """The Option of a dataclass field declared with `option()` or `Option.field()`; None for another field."""
    return field.metadata.get("option")


# The settings of every command that computes: where (engine.resolve_device), and on how many CPU
# threads (engine.set_threads). They are here rather than in engine.py so that a command that
# computes nothing (`mnistlab data`) declares its flags without loading torch.
DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE = Option("auto", "where to compute (auto: cuda, then mps, then cpu)", choices=DEVICES)
THREADS = Option(None, "CPU threads for torch", type=int, default_text="torch's choice")
# One thread for a command that trains or evaluates one model on a CPU: on a 2-core CPU two threads
# trained 1.3x faster when nothing else ran, and 1.5x slower beside one other busy process, and
# evaluated slower either way (benchmarks/threads.md).
ONE_THREAD = Option(1, "CPU threads for torch (more are faster only on an otherwise idle machine)", type=int)
