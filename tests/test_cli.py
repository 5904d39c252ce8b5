"""The `mnistlab` command itself: what every subcommand gets from cli.main."""

from __future__ import annotations

import ast
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
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(mnistlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mnistlab", "models"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    def run(args):
        raise BrokenPipeError(32, "Broken pipe")  # as a pipe to a worker process would

    monkeypatch.setattr(mnistlab.cli.models, "run", run)
    with pytest.raises(BrokenPipeError):
        cli.main(["models"])


@pytest.mark.parametrize("command", ["train", "compare", "bench", "evaluate", "predict", "export", "serve", "data"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag_help in re.split(r"\s--?[a-z]", text):
        assert flag_help.count("(default:") <= 1, flag_help


SRC = Path(mnistlab.__file__).parent


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether at the top level of the file) for every import statement of `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [
                (f"{node.module}.{alias.name}" if node.module == "mnistlab" else node.module, id(node) in top)
                for alias in node.names
            ]
    return found


def test_the_library_below_knows_nothing_of_the_commands_above():
    """No library module imports argparse or a command; a command imports no other command."""
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        found = [module for module, _ in imports(path)]
        if name.startswith("mnistlab.cli.") and name != "mnistlab.cli.flags":
            assert not [m for m in found if m.startswith("mnistlab.cli") and m != "mnistlab.cli.flags"], name
        elif not name.startswith("mnistlab.cli") and name != "mnistlab.__main__":  # `python -m mnistlab` runs the CLI
            assert "argparse" not in found and not any(m.startswith("mnistlab.cli") for m in found), name


OPTIONAL = {"onnx", "onnxscript", "onnxruntime", "dask", "distributed", "playwright"}  # heavy extras, loaded on demand


def test_imports_sit_at_the_top_of_their_module():
    """An import inside a function hides the module graph; the exceptions are the optional extras,
    loaded where they are used, and the one that picks numpy's module by version."""
    inside = {
        (path.name, module)
        for path in SRC.rglob("*.py")
        for module, at_top in imports(path)
        if not at_top and module.split(".")[0] not in OPTIONAL
    }
    assert inside <= {("download.py", "numpy._core.multiarray"), ("download.py", "numpy.core.multiarray")}, inside
