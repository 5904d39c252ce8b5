"""Flags made from settings (cli/flags.py, options.py): one place for each flag's default and help."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from mnistlab import cli
from mnistlab.bench.measure import Settings
from mnistlab.cli.flags import add_config_flags, given_settings
from mnistlab.config import TrainConfig
from mnistlab.data import DATASETS
from mnistlab.options import option, option_of
from mnistlab.study import StudyConfig


@dataclasses.dataclass(frozen=True)
class Example:
    epochs: int = option(7, "how many passes")
    rate: float | None = option(None, "a rate in %", default_text="the model's own")
    names: tuple[str, ...] = option(("a", "b"), "some names", metavar="NAME")
    kind: str = option("x", "which kind", choices=("x", "y"))
    fast: bool = option(False, "go fast")
    plain: int = 3  # not a setting: no flag


def parser_for(config, given_only=False) -> argparse.ArgumentParser:
    parser = cli.Parser(prog="example")
    add_config_flags(parser, config, given_only)
    return parser


def test_a_flag_per_setting_with_its_type_default_and_help():
    parser = parser_for(Example)
    assert Example(**given_settings(parser.parse_args([]), Example)) == Example()
    args = parser.parse_args(["--epochs", "2", "--rate", "0.5", "--names", "c", "d", "e", "--kind", "y", "--fast"])
    assert Example(**given_settings(args, Example)) == Example(2, 0.5, ("c", "d", "e"), "y", True)
    text = " ".join(parser.format_help().split())
    assert "--epochs EPOCHS how many passes (default: 7)" in text
    assert "a rate in % (default: the model's own)" in text
    assert "--names NAME [NAME ...] some names (default: a b)" in text and "go fast (default: off)" in text
    assert "--plain" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "z"])


def test_given_only_flags_are_none_unless_given_and_the_help_still_states_the_default():
    parser = parser_for(Example, given_only=True)
    assert given_settings(parser.parse_args([]), Example) == {}
    assert given_settings(parser.parse_args(["--fast", "--epochs", "7"]), Example) == {"fast": True, "epochs": 7}
    assert "how many passes (default: 7)" in " ".join(parser.format_help().split())


def command_flags(command: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {flag: action for action in sub._actions for flag in action.option_strings}


SHARED = {
    "--data-dir": ["data", "train", "compare", "evaluate", "serve", "bench"],
    "--device": ["train", "compare", "evaluate", "bench"],
    "--threads": ["compare", "bench"],  # train and evaluate: one thread by default (below)
    "--dataset": ["data", "train", "compare"],
}


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_flag_reads_the_same_in_every_command(flag):
    actions = {command: command_flags(command)[flag] for command in SHARED[flag]}
    described = {(a.help, a.type, tuple(a.choices or ())) for a in actions.values()}
    assert len(described) == 1, actions
    if flag == "--dataset":
        assert tuple(actions["data"].choices) == DATASETS


def test_a_command_that_trains_or_evaluates_one_model_takes_one_thread_by_default():
    actions = {command: command_flags(command)["--threads"] for command in ("train", "evaluate")}
    assert {(a.help, a.type, a.default) for a in actions.values()} == {(actions["train"].help, int, 1)}
    assert actions["train"].help.endswith("(default: 1)")


@pytest.mark.parametrize("command, config", [("train", TrainConfig), ("compare", StudyConfig), ("bench", Settings)])
def test_every_setting_of_a_config_is_a_flag_that_states_the_configs_default(command, config):
    flags = command_flags(command)
    for field in dataclasses.fields(config):
        setting = option_of(field)
        if setting is None:
            continue
        flag = flags["--" + field.name.replace("_", "-")]
        assert flag.help.replace("%%", "%").endswith(f"(default: {setting.describe_default()})"), flag.help
        assert setting.default == field.default
