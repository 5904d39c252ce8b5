"""`mnistlab compare --cluster`: a real `dask scheduler` and `dask worker`s on 127.0.0.1, started and stopped here.

The workers are processes of this test, stopped by their PID; every wait has a deadline. Good
workers train on the synthetic data (`dask worker --preload synthetic`), as the study's process does.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import synthetic_command, use_synthetic_data

import mnistlab
import mnistlab.study as study
from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli import main
from mnistlab.cluster import connect
from mnistlab.configurations import BASELINE, EXPERIMENT, Configuration
from mnistlab.errors import UserError
from mnistlab.predictions import read_test_predictions

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="needs Dask: pip install 'mnistlab[cluster]' (make setup installs it)",
)
# one scheduler and its workers (the `dask` fixture) serve these tests: with parallel test processes, they run in one
shared_cluster = pytest.mark.xdist_group("dask")

# The default 5,000 validation images leave 12,000 to train on: an epoch of LeNet-5 takes a second
# or two, longer than the study's wait for events (1 s), so that Ctrl-C and a lost worker come in
# the middle of a run.
SYNTHETIC = (17_000, 300)
STUDY = ["compare", "--models", "lenet5", "mlp-small", "--seeds", "2", "--epochs", "2"]
SRC, TESTS = Path(mnistlab.__file__).parents[1], Path(__file__).parent


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def metrics(results: dict) -> dict:
    """Every run's per-epoch metrics, timings aside, by run directory."""
    return {
        r["run_dir"]: [{k: v for k, v in m.items() if "second" not in k} for m in r["metrics"]] for r in results["runs"]
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


class Dask:
    """A `dask scheduler` on 127.0.0.1 and the `dask worker`s added to it, each in its own session."""

    def __init__(self, tmp: Path):
        self.tmp, self.processes, self.workers = tmp, [], {}
        tmp.mkdir(parents=True, exist_ok=True)
        file = tmp / "scheduler.json"
        # the backstops, should this test die without stopping them: an idle scheduler closes, and so do its workers
        self.scheduler = self.start(
            "scheduler",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--dashboard-address",
            "127.0.0.1:0",
            "--idle-timeout",
            "300",
            "--scheduler-file",
            str(file),
        )
        wait_until(
            lambda: file.exists() and file.stat().st_size or self.scheduler.poll() is not None, 60, "no scheduler"
        )
        assert self.scheduler.poll() is None, self.log("scheduler")
        time.sleep(0.1)  # the file may be half-written for a moment
        self.address = json.loads(file.read_text())["address"]

    def env(self, pythonpath: list[Path], **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MNISTLAB_", "DASK_"))}
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
        return {**env, "MNISTLAB_SYNTHETIC": ",".join(map(str, SYNTHETIC)), **extra}

    def start(self, name: str, module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or self.env([SRC, TESTS]),
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def add_worker(self, name: str, preload: bool = True, pythonpath: list[Path] = (SRC, TESTS), **env: str):
        """A worker with one thread; with `preload`, it trains on the synthetic data."""
        self.workers[name] = self.start(
            name,
            "distributed.cli.dask_worker",
            self.address,
            "--name",
            name,
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            "--death-timeout",
            "30",
            "--local-directory",
            str(self.tmp / name),
            *(["--preload", "synthetic"] if preload else []),
            env=self.env(list(pythonpath), **env),
        )
        return self.workers[name]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=10, set_as_default=False)

    def stop(self) -> None:
        """The workers first: a worker whose scheduler has gone waits for it before it leaves."""
        for group in ([p for p in self.processes if p is not self.scheduler], [self.scheduler]):
            for process in group:
                if process.poll() is None:
                    process.terminate()
            for process in group:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The micro-study's results.json, trained here as by default (LeNet-5's seeds stacked), one unit at a time on one
    thread, as each cluster worker trains."""
    out = tmp_path_factory.mktemp("local") / "study"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_synthetic_data(monkeypatch, *SYNTHETIC)
        assert main([*STUDY, "--threads", "1", "--jobs", "1", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def dask(tmp_path_factory):
    """A scheduler with two workers, and a client of this test's own."""
    if importlib.util.find_spec("distributed") is None:
        pytest.skip("needs Dask: pip install 'mnistlab[cluster]'")
    cluster = Dask(tmp_path_factory.mktemp("dask"))
    try:
        cluster.add_worker("one")
        cluster.add_worker("two")
        cluster.watcher = cluster.client()
        cluster.watcher.wait_for_workers(2, timeout=60)
        cluster.worker_addresses = {info["name"]: a for a, info in cluster.watcher.scheduler_info()["workers"].items()}
        yield cluster
        cluster.watcher.close()
    finally:
        cluster.stop()


@pytest.fixture
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, *SYNTHETIC)


@needs_dask
@shared_cluster
def test_the_cluster_gives_the_local_numbers_and_the_same_progress(
    dask, reference, synthetic_data, tmp_path, progress_events, capsys
):
    calls = progress_events
    out = tmp_path / "study"
    assert main([*STUDY, "--cluster", dask.address, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert metrics(results) == metrics(reference)  # to the last digit
    # the same units of work: LeNet-5's two seeds as one stacked model, the MLP's alone
    assert {r["run_dir"]: r["stacked"] for r in results["runs"]} == {
        r["run_dir"]: r["stacked"] for r in reference["runs"]
    }
    assert sorted(r["stacked"] for r in results["runs"]) == [1, 1, 2, 2]
    for run in results["runs"]:  # the run directories are the study's, on this machine
        assert load_checkpoint(out / run["run_dir"])["metrics"] == run["metrics"]
        assert (out / run["run_dir"] / "metrics.csv").exists() and (out / run["run_dir"] / "config.json").exists()
    assert results["machine"]["cluster"] == dask.address and results["machine"]["threads_per_run"] == 1
    assert f"own times (on the Dask workers at {dask.address}, 1 thread each)" in (out / "REPORT.md").read_text()

    printed = capsys.readouterr().out
    for run in results["runs"]:  # the final model's test classes come back with its last epoch
        kept = read_test_predictions(out / run["run_dir"], len(run["metrics"]), SYNTHETIC[1])
        assert np.mean(kept == synthetic_data.test_labels) == pytest.approx(run["metrics"][-1]["test_acc"])
    assert "made again" not in printed
    assert f"cluster: {dask.address}: 2 workers, 2 runs at once, 1 thread per run" in printed
    assert "[4/4]" in printed and "left ~" in printed
    for i in range(4):  # as the workers sent them
        assert [kind for kind, run in calls if run == i] == ["start", "epoch", "epoch", "end"], calls


@needs_dask
@shared_cluster
def test_ctrl_c_cancels_the_runs_leaves_the_cluster_up_and_the_study_resumes(
    dask, reference, synthetic_data, tmp_path, capsys
):
    out = tmp_path / "study"
    log = tmp_path / "study.log"
    with open(log, "w") as f:
        study = subprocess.Popen(
            [*synthetic_command(*SYNTHETIC), *STUDY, "--cluster", dask.address, "--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def one_epoch_back() -> bool:  # LeNet-5's runs (stacked, the slowest) in the middle: epoch 1 written
            return any(len(f.read_text().splitlines()) == 2 for f in out.glob("runs/lenet5-*/metrics.csv"))

        wait_until(lambda: one_epoch_back() or study.poll() is not None, 120, "no run came back in its middle")
        assert study.poll() is None, log.read_text()
        os.killpg(study.pid, signal.SIGINT)  # as Ctrl-C sends it
        sent = time.monotonic()
        assert study.wait(30) == 130, log.read_text()
        assert time.monotonic() - sent < 10
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
    assert "rerun the same command to resume" in log.read_text()
    wait_until(
        lambda: not any(subprocess.run(["pgrep", "-s", str(study.pid)], capture_output=True).stdout.split()),
        5,
        "a process of the study is left",
    )
    assert not list(out.rglob("*.tmp"))
    kept = {d.name: load_checkpoint(d)["metrics"] for d in out.glob("runs/*") if (d / "checkpoint.pt").exists()}
    assert kept and all(1 <= len(m) <= 2 for m in kept.values()), kept
    # LeNet-5's seeds, trained stacked, kept the same epochs: they resume stacked, to the same numbers
    assert len({len(m) for name, m in kept.items() if name.startswith("lenet5-")}) == 1, kept

    # the cluster is still up, and its workers let the cancelled runs go
    assert all(p.poll() is None for p in dask.processes)
    wait_until(lambda: not any(dask.watcher.processing().values()), 30, "the workers still train the study's runs")
    capsys.readouterr()
    assert main([*STUDY, "--cluster", dask.address, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert metrics(results) == metrics(reference)  # a resumed run too: a worker continued it from its checkpoint
    resumed = [name for name, before in kept.items() if len(before) == 1]
    assert resumed, kept  # the run going when Ctrl-C came has kept its first epoch alone
    for name in resumed:
        variant, _, seed = name.rpartition("-e2-s")
        assert f"{variant} seed {seed}: resuming after epoch 1" in printed
    for name, before in kept.items():  # the kept epochs were not trained again
        assert next(r for r in results["runs"] if r["run_dir"] == f"runs/{name}")["metrics"][: len(before)] == before


@needs_dask
@shared_cluster
def test_the_run_of_a_worker_that_dies_is_trained_again_elsewhere(dask, reference, tmp_path):
    out, log = tmp_path / "study", tmp_path / "study.log"
    with open(log, "w") as f:
        study = subprocess.Popen(
            [*synthetic_command(*SYNTHETIC), *STUDY, "--cluster", dask.address, "--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # worker two in the middle of a run: the run has a finished epoch, in the worker's own directory
        wait_until(
            lambda: any((dask.tmp / "two").rglob("mnistlab-run-*/*/checkpoint.pt")) or study.poll() is not None,
            120,
            "worker two trained no epoch",
        )
        assert study.poll() is None, log.read_text()
        dask.workers["two"].kill()
        assert study.wait(120) == 0, log.read_text()
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
    assert metrics(json.loads((out / "results.json").read_text())) == metrics(reference)
    assert dask.watcher.scheduler_info()["workers"].keys() == {dask.worker_addresses["one"]}


@needs_dask
@shared_cluster
def test_a_run_that_stops_on_a_worker_is_kept_as_a_run_trained_here_would_be(
    dask, synthetic_data, tmp_path, monkeypatch
):
    """A learning-rate test's run that stops is a result (failed.json, in the study's run directory);
    a study arm that stops ends the study with its message."""
    cluster = connect(dask.address, "mnist", 1, log=lambda line: None)
    try:
        probe = [
            Configuration(
                "lenet5-lr3",
                "lenet5",
                "LeNet-5 at lr 3",
                EXPERIMENT,
                base="lenet5",
                settings=(("lr", 3.0),),
                may_fail=True,
            )
        ]
        (run,) = study.study(probe, 1, 1, "mnist", tmp_path, synthetic_data, "cpu", cluster=cluster)["runs"]
        assert (
            "epoch 1: the training loss is nan" in run["metrics"][-1]["failed"]
            and run["metrics"][-1]["train_loss"] is None
        )
        record = json.loads((tmp_path / run["run_dir"] / "failed.json").read_text())
        assert record == {
            "config": study.run_config(probe[0], 0, 1, "mnist", "cpu").to_dict(),
            "metrics": run["metrics"],
        }

        arm = [Configuration("lenet5-fast", "lenet5", "LeNet-5 at lr 3", BASELINE, settings=(("lr", 3.0),))]
        with pytest.raises(UserError, match="the training loss is nan"):
            study.study(arm, 1, 1, "mnist", tmp_path, synthetic_data, "cpu", cluster=cluster)
    finally:
        cluster.close()

    # here, without the cluster: the stopped run is reused, not trained again
    monkeypatch.setattr(study, "fit", lambda *a, **k: pytest.fail("trained again"))
    (again,) = study.study(probe, 1, 1, "mnist", tmp_path, synthetic_data, "cpu")["runs"]
    assert again["metrics"] == run["metrics"]


# ---------------------------------------------------------------- bad input


@needs_dask
@shared_cluster
@pytest.mark.parametrize(
    "where", ["refused", "silent", "worker", "no port", "scheme", "port too large", "port negative"]
)
def test_a_wrong_address_fails_fast_with_one_line(dask, synthetic_data, tmp_path, capsys, where):
    listener = socket.socket()  # accepts connections and never answers, as a server of another kind might
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    worker = next(iter(dask.watcher.scheduler_info()["workers"]))
    address, expected = {
        "refused": (f"tcp://127.0.0.1:{port}", "nothing listens there"),
        "silent": (f"tcp://127.0.0.1:{listener.getsockname()[1]}", "no answer from a Dask scheduler within 5 s"),
        "worker": (worker, "a Dask Worker answers there, not the scheduler"),
        "no port": ("tcp://127.0.0.1", "not the address of a Dask scheduler"),
        "scheme": ("htp://127.0.0.1:8786", "not the address of a Dask scheduler"),
        "port too large": ("tcp://127.0.0.1:99999", "not the address of a Dask scheduler (the port must be in 1..6"),
        "port negative": ("tcp://127.0.0.1:-5", "not the address of a Dask scheduler (the port must be in 1..6"),
    }[where]
    start = time.monotonic()
    try:
        assert main([*STUDY, "--cluster", address, "--out", str(tmp_path / "study")]) == 2
    finally:
        listener.close()
    assert time.monotonic() - start < 8
    line = one_error_line(capsys)
    assert line.startswith(f"mnistlab compare: error: --cluster {address}: {expected}"), line
    assert not (tmp_path / "study").exists()


@needs_dask
def test_workers_without_the_data_or_with_another_version_are_refused_by_name(synthetic_data, tmp_path, capsys):
    other = tmp_path / "other"  # mnistlab as it would be at another version
    shutil.copytree(SRC / "mnistlab", other / "mnistlab", ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "mnistlab" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{mnistlab.__version__}"', '__version__ = "0.0.9"'))
    (tmp_path / "empty").mkdir()
    dask = Dask(tmp_path / "dask")
    try:
        dask.add_worker("empty", preload=False, MNISTLAB_DATA=str(tmp_path / "empty"))
        dask.add_worker("older", pythonpath=[other, TESTS])
        with dask.client() as watcher:
            watcher.wait_for_workers(2, timeout=60)
            workers = {info["name"]: a for a, info in watcher.scheduler_info()["workers"].items()}
            out = tmp_path / "study"
            assert main([*STUDY, "--cluster", dask.address, "--out", str(out)]) == 2
            line = one_error_line(capsys)
            assert f"worker empty ({workers['empty']}) cannot load mnist (no source could supply mnist" in line, line
            assert f"{tmp_path / 'empty'}" in line and "prepare it with `mnistlab data` on that machine" in line, line
            assert (
                f"worker older ({workers['older']}) runs mnistlab 0.0.9, and this study mnistlab "
                f"{mnistlab.__version__}: install the same version on every worker"
            ) in line, line
            assert not (out / "runs").exists()

            # a worker that joins once the study has started is checked by the runs it takes
            from mnistlab.cluster import own_versions, train_on_worker

            for name, expected in [("older", "runs mnistlab 0.0.9"), ("empty", "cannot load mnist")]:
                unit = [(0, {"dataset": "mnist"}, None, "d")]
                run = watcher.submit(
                    train_on_worker, unit, 1, own_versions(), "unused", workers=[workers[name]], pure=False
                )
                with pytest.raises(mnistlab.errors.UserError, match=f"worker {name} .*{expected}"):
                    run.result(timeout=60)
    finally:
        dask.stop()


def test_without_dask_the_flag_says_how_to_install_it(synthetic_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets where it is not installed
    assert main([*STUDY, "--cluster", "tcp://127.0.0.1:8786", "--out", str(tmp_path / "study")]) == 2
    assert one_error_line(capsys) == (
        "mnistlab compare: error: --cluster needs Dask, which is not installed here: pip install 'mnistlab[cluster]'"
    )


def test_jobs_and_cluster_do_not_go_together(synthetic_data, tmp_path, capsys):
    assert main([*STUDY, "--cluster", "tcp://127.0.0.1:8786", "--jobs", "2", "--out", str(tmp_path / "study")]) == 2
    assert "--jobs is the number of runs trained here at once" in one_error_line(capsys)


def test_a_worker_gives_malloc_back_its_usual_thresholds(tmp_path):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 for its workers; plain_malloc undoes what that costs torch."""
    script = tmp_path / "faults.py"
    script.write_text(
        "import resource, sys, torch\n"
        "from mnistlab.cluster import plain_malloc\n"
        "from mnistlab.models import create_model\n"
        "if sys.argv[1] == 'plain':\n"
        "    assert plain_malloc()\n"
        "torch.set_num_threads(1)\n"
        "model, x = create_model('lenet5'), torch.rand(256, 1, 28, 28)\n"
        "model(x).sum().backward()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    model(x).sum().backward()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(sys.path)}
    faults = {}
    for how in ("as-dask-starts-it", "plain"):
        done = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        faults[how] = int(done.stdout)
    assert faults["plain"] * 10 < faults["as-dask-starts-it"], faults


@needs_dask
def test_the_address_is_checked_before_the_data(tmp_path, capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the address was checked")

    monkeypatch.setattr(mnistlab.data, "load_dataset", no_data)
    assert main([*STUDY, "--cluster", "tcp://127.0.0.1:99999", "--out", str(tmp_path / "study")]) == 2
    assert "the port must be in 1..65535" in one_error_line(capsys)


def test_a_worker_without_the_data_makes_no_data_directory(tmp_path, monkeypatch):
    from mnistlab.cluster import data_problem

    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert "cannot load mnist" in data_problem("mnist")
    assert list(tmp_path.iterdir()) == []
