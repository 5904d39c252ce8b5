"""One writer per run directory: `train`, `fit`, `compare` and `run_study` refuse a directory that
another process is writing, with one line naming it; the lock dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from synthetic import make_arrays, use_synthetic_data

from mnistlab import StudyConfig, TrainConfig, fit, run_study
from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli import main
from mnistlab.errors import UserError

LOCK_NAME = ".mnistlab.lock"  # the contract: an flock on this file in the directory, the holder's pid inside

TINY = ["--epochs", "1", "--batch-size", "32", "--val-size", "100", "--threads", "1"]
CONFIG = TrainConfig(epochs=1, batch_size=32, val_size=100, device="cpu")

# Another process that holds the directory's lock as the contract says: flock on LOCK_NAME, its pid inside.
HOLDER = """\
import fcntl, os, sys
directory = sys.argv[1]
os.makedirs(directory, exist_ok=True)
fd = os.open(os.path.join(directory, {name!r}), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
sys.stdin.read()
""".format(name=LOCK_NAME)


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 600, 200)


@contextmanager
def held_by_another_process(directory: Path):
    """Yields the pid of a process that holds `directory`'s lock until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_into_a_directory_another_process_writes_exits_2_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    with held_by_another_process(out) as holder:
        assert main(["train", *TINY, "--out", str(out)]) == 2
        line = one_error_line(capsys)
    assert f"is being written by process {holder.pid}" in line, line
    assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()


def test_an_extension_while_another_process_writes_the_run_leaves_the_run_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    with held_by_another_process(out) as holder:
        assert main(["train", "--resume", str(out), "--extend", "1"]) == 2
        assert f"process {holder.pid}" in one_error_line(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_the_lock_dies_with_its_process(tmp_path, capsys):
    out = tmp_path / "run"
    with held_by_another_process(out) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert main(["train", *TINY, "--out", str(out)]) == 0  # no stale lock: the kernel released it
    assert load_checkpoint(out)["epoch"] == 1


def test_compare_into_a_study_another_process_writes_exits_2(tmp_path, capsys):
    out = tmp_path / "study"
    with held_by_another_process(out) as holder:
        code = main(
            ["compare", "--models", "mlp-small", "--seeds", "1", "--epochs", "1", "--jobs", "1", "--out", str(out)]
        )
        assert code == 2
        assert f"process {holder.pid}" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_fit_and_run_study_refuse_a_directory_another_process_writes(tmp_path):
    arrays = make_arrays(600, 200)
    with held_by_another_process(tmp_path / "run") as holder:
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            fit(CONFIG, arrays, tmp_path / "run", log=lambda line: None)
    with held_by_another_process(tmp_path / "study") as holder:
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            config = StudyConfig(models=("mlp-small",), seeds=1, epochs=1, jobs=1, out=str(tmp_path / "study"))
            run_study(config, arrays)


def test_two_processes_training_one_directory_at_once_one_refused(tmp_path):
    """The real race: two `mnistlab train --out D` started together; one trains, the other exits 2."""
    out = tmp_path / "run"
    patch = (
        f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; import synthetic; "
        "synthetic.use_synthetic_data(__import__('pytest').MonkeyPatch(), 600, 200); "
        "from mnistlab.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", patch, "train", *TINY, "--epochs", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outcomes = sorted((run.wait(120), run.stderr.read()) for run in runs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "is being written by process" in outcomes[1][1] or "already holds a run" in outcomes[1][1]
    assert load_checkpoint(out)["epoch"] == 3


def test_the_lock_is_reentrant_in_its_thread_and_refuses_another_thread(tmp_path):
    from mnistlab.runlock import run_lock

    errors = []
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # `train` holds it, then `fit` takes it again
            pass

        def other():
            try:
                with run_lock(tmp_path):
                    pass
            except UserError as e:
                errors.append(str(e))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread" in errors[0]
    with run_lock(tmp_path):  # released once the outer block ended
        pass


def test_fit_refuses_to_replace_another_run(tmp_path):
    arrays = make_arrays(600, 200)
    fit(TrainConfig(model="lenet5", epochs=1, batch_size=32, val_size=100, device="cpu"), arrays, tmp_path, log=print)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        fit(TrainConfig(model="mlp-small", epochs=1, batch_size=32, val_size=100, device="cpu"), arrays, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
