"""The Python API (`from mnistlab import ...`): the README's example runs as printed, on synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from synthetic import use_synthetic_data

import mnistlab
import mnistlab.study

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The Python code block of the README's "From Python" section."""
    section = README.read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


def test_the_readme_example_trains_a_model_and_runs_a_study(tmp_path, monkeypatch, capsys):
    use_synthetic_data(monkeypatch, 5400, 300)  # TrainConfig's 5,000 validation images leave 400 to train on
    monkeypatch.setattr(mnistlab.study, "default_jobs", lambda device: 1)  # in this process: quicker than workers
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "__main__"})
    run_dir, study_dir = tmp_path / "runs" / "lenet5", tmp_path / "reports" / "small"
    for name in ("config.json", "metrics.csv", "checkpoint.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    for name in ("results.json", "REPORT.md", "training_testing_metrics.png"):
        assert (study_dir / name).stat().st_size > 0, name
    results = json.loads((study_dir / "results.json").read_text())
    assert (results["seeds"], results["epochs"], set(results["summary"])) == (2, 1, {"lenet5", "mlp-small"})
    assert "test accuracy after 2 epochs: " in capsys.readouterr().out


def test_the_api_exports_what_it_names_and_nothing_else():
    for name in mnistlab.__all__:
        assert getattr(mnistlab, name) is not None, name
    assert issubclass(mnistlab.UserError, ValueError)
    with pytest.raises(AttributeError):
        mnistlab.no_such_name  # noqa: B018
