"""The Python API (`from mnistlab import ...`): the README's example runs as printed, on synthetic data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


SYNTHETIC_DATA = """\
import mnistlab.data
from synthetic import make_arrays

mnistlab.data.load_dataset = lambda *args, **kwargs: make_arrays({n_train}, 300)
"""


def run_script(tmp_path: Path, code: str, n_train: int, timeout: float) -> subprocess.CompletedProcess:
    """`python script.py` in tmp_path, mnistlab.data.load_dataset giving synthetic data in it and its workers."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(SYNTHETIC_DATA.format(n_train=n_train))
    (tmp_path / "script.py").write_text(code)
    paths = [str(patch), str(Path(mnistlab.__file__).parents[1]), str(Path(__file__).parent)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_example_runs_as_a_script_with_worker_processes(tmp_path):
    done = run_script(tmp_path, readme_example().replace("seeds=2", "seeds=2, jobs=2"), 5400, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("study: ") == 1  # the workers import the script without running the study again
    assert (tmp_path / "reports" / "small" / "REPORT.md").stat().st_size > 0


def test_a_study_with_workers_at_a_scripts_top_level_fails_at_once_saying_what_to_add(tmp_path):
    code = (
        "from mnistlab import StudyConfig, load_dataset, run_study\n"
        "run_study(StudyConfig(models=('mlp-small',), seeds=1, epochs=1, jobs=2, out='study'), load_dataset())\n"
    )
    done = run_script(tmp_path, code, 600, timeout=90)  # before, it waited for its workers forever
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mnistlab.errors.UserError: ") and "script.py, line 2" in last, last
    assert 'if __name__ == "__main__":' in last
    assert not list((tmp_path / "study").glob("runs/*/checkpoint.pt"))


@pytest.fixture
def arrays():
    from synthetic import make_arrays

    return make_arrays(600, 200)


CONFIG = {"epochs": 1, "batch_size": 32, "val_size": 100, "device": "cpu"}
WRONG_CALLS = {
    "StudyConfig(seeds='3')": lambda arrays, d: mnistlab.StudyConfig(seeds="3"),
    "StudyConfig(epochs=1.5)": lambda arrays, d: mnistlab.StudyConfig(epochs=1.5),
    "StudyConfig(models='lenet5')": lambda arrays, d: mnistlab.StudyConfig(models="lenet5"),
    "StudyConfig(models=())": lambda arrays, d: mnistlab.StudyConfig(models=()),
    "StudyConfig(out=5)": lambda arrays, d: mnistlab.StudyConfig(out=5),
    "StudyConfig(dataset='cifar')": lambda arrays, d: mnistlab.StudyConfig(dataset="cifar"),
    "TrainConfig(dataset='cifar')": lambda arrays, d: mnistlab.TrainConfig(dataset="cifar"),
    "fit(cfg, None, d)": lambda arrays, d: mnistlab.fit(mnistlab.TrainConfig(**CONFIG), None, d),
    "fit(dict, arrays, d)": lambda arrays, d: mnistlab.fit({"model": "lenet5", **CONFIG}, arrays, d),
    "fit(cfg, arrays, None)": lambda arrays, d: mnistlab.fit(mnistlab.TrainConfig(**CONFIG), arrays, None),
    "fit(fashion cfg, mnist arrays)": lambda arrays, d: mnistlab.fit(
        mnistlab.TrainConfig(dataset="fashion-mnist", **CONFIG), arrays, d
    ),
    "load_model(None)": lambda arrays, d: mnistlab.load_model(None),
    "load_dataset(data_dir=5)": lambda arrays, d: mnistlab.load_dataset("mnist", data_dir=5),
    "load_dataset(['mnist'])": lambda arrays, d: mnistlab.load_dataset(["mnist"]),
    "run_study(dict, arrays)": lambda arrays, d: mnistlab.run_study({"models": ("lenet5",)}, arrays),
    "run_study(cfg, None)": lambda arrays, d: mnistlab.run_study(mnistlab.StudyConfig(out=str(d)), None),
}


@pytest.mark.parametrize("call", WRONG_CALLS)
def test_a_wrong_call_from_python_is_a_user_error_and_writes_nothing(call, arrays, tmp_path):
    with pytest.raises(mnistlab.UserError) as caught:
        WRONG_CALLS[call](arrays, tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_string_for_models_says_how_to_write_one_configuration():
    with pytest.raises(
        mnistlab.UserError, match=r"tuple of study configurations, e\.g\. \('lenet5', 'mlp'\), got 'lenet5'"
    ):
        mnistlab.StudyConfig(models="lenet5")
