"""The `mnistlab` command itself: what every subcommand gets from cli.main."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mnistlab
import mnistlab.cli.models
from mnistlab import cli


def test_a_closed_stdout_ends_the_command_quietly():
    """`mnistlab models | head -1`: the reader goes; no traceback, the status a shell gives a program stopped by SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line is written
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mnistlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-m", "mnistlab", "models"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    def run(args):
        raise BrokenPipeError(32, "Broken pipe")  # as a pipe to a worker process would

    monkeypatch.setattr(mnistlab.cli.models, "run", run)
    with pytest.raises(BrokenPipeError):
        cli.main(["models"])


@pytest.mark.parametrize("command", ["train", "compare", "bench", "evaluate", "predict", "serve", "data"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag_help in re.split(r"\s--?[a-z]", text):
        assert flag_help.count("(default:") <= 1, flag_help
