import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_command, use_synthetic_data

import mnistlab.study
from mnistlab import claims
from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.configurations import BASELINE, CONFIGURATIONS, Configuration
from mnistlab.errors import UserError
from mnistlab.fast.stacked import worth_stacking
from mnistlab.metrics import read_metrics_csv
from mnistlab.models import CONVOLUTIONAL, FULLY_CONNECTED, MODELS, LeNet5, Registered
from mnistlab.report import pct, summarize
from mnistlab.study import StudyConfig, config_differences, run_study

ARMS = ["lenet5", "mlp", "lenet5-dropout"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 5400, 300)  # the default 5,000 validation images leave 400 to train on


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    real = mnistlab.study.fit

    def counting_fit(config, *a, **k):
        calls.append((config.model, config.augment, config.seed))
        return real(config, *a, **k)

    monkeypatch.setattr(mnistlab.study, "fit", counting_fit)
    return calls


def study(out, *extra):
    return main(
        [
            "compare",
            "--quick",
            "--models",
            *ARMS,
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--jobs",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_study_writes_every_part_and_the_numbers_agree(tmp_path, capsys):
    out = tmp_path / "study"
    assert study(out) == 0
    for name in (
        "results.json",
        "REPORT.md",
        "training_testing_metrics.png",
        "confusion_best_lenet5.png",
        "mistakes_best_lenet5.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    report = (out / "REPORT.md").read_text()
    for number, title in enumerate(
        ["Performance", "curves", "Regularization", "Published reference", "confusion matrix", "Analysis"], 1
    ):
        assert re.search(rf"^## {number}\. .*{title}", report, re.M | re.I), title
    assert report.index("## 7. The claims, tested") < report.index("## 8. Parameters")  # the parameter tables last
    assert len(results["runs"]) == 6 and {r["variant"] for r in results["runs"]} == set(ARMS)
    assert f"{len(ARMS)} configurations x 2 seeds x 2 epochs. " in report  # not "2 seed(s)"

    # results.json holds what the run directories hold, and its summary is derived from it
    for run in results["runs"]:
        on_disk = read_metrics_csv(out / run["run_dir"] / "metrics.csv")
        assert [round(m["test_acc"], 5) for m in on_disk] == [round(m["test_acc"], 5) for m in run["metrics"]]
    assert results["summary"] == json.loads(json.dumps(summarize(results)))

    # every performance row of the report shows the numbers in results.json
    for name, s in results["summary"].items():
        label = results["variants"][name]["label"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} | {s['parameters']:,} |"))
        for key in ("train_acc", "test_acc", "test_acc_at_best_val"):
            assert f" {pct(s[key])} " in row, (name, key, row)
    mean_test = sum(r["metrics"][-1]["test_acc"] for r in results["runs"] if r["variant"] == "lenet5") / 2
    assert f"{100 * mean_test:.2f} ± " in report
    lenet_error = 100 - 100 * results["summary"]["lenet5"]["test_acc"]["mean"]
    assert re.search(rf"\| LeNet-5 \| 0\.95% \| {lenet_error:.2f}% ± ", report)
    assert "[6/6]" in capsys.readouterr().out


def test_rerun_skips_finished_runs_and_finishes_missing_ones(tmp_path, capsys, fit_calls):
    out = tmp_path / "study"
    assert study(out, "--no-stack") == 0
    assert len(fit_calls) == 6
    first = (out / "results.json").read_text()
    assert study(out, "--no-stack") == 0
    assert len(fit_calls) == 6  # nothing trained again
    assert capsys.readouterr().out.count("finished earlier, reused") == 6
    a, b = json.loads(first), json.loads((out / "results.json").read_text())
    assert a["summary"] == b["summary"]

    # an interrupted study: one run lost its last epoch, another never started
    import shutil

    shutil.rmtree(out / "runs" / "mlp-e2-s1")
    ckpt_path = out / "runs" / "lenet5-e2-s0" / "checkpoint.pt"
    import torch

    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["metrics"] = ckpt["metrics"][:1]
    ckpt["epoch"] = 1
    torch.save(ckpt, ckpt_path)
    assert study(out, "--no-stack") == 0
    assert sorted(fit_calls[6:]) == [("lenet5", False, 0), ("mlp", False, 1)]
    assert "resuming after epoch 1" in capsys.readouterr().out


def test_a_resumed_study_numbers_its_runs_once(tmp_path, capsys):
    import torch

    out = tmp_path / "study"
    command = [
        "compare",
        "--quick",
        "--models",
        "mlp-small",
        "--seeds",
        "4",
        "--epochs",
        "2",
        "--jobs",
        "1",
        "--out",
        str(out),
    ]
    assert main(command) == 0
    shutil.rmtree(out / "runs" / "mlp-small-e2-s0")  # never started
    path = out / "runs" / "mlp-small-e2-s1" / "checkpoint.pt"  # stopped after its first epoch
    payload = torch.load(path, weights_only=True)
    payload["metrics"], payload["epoch"] = payload["metrics"][:1], 1
    torch.save(payload, path)
    capsys.readouterr()

    assert main(command) == 0
    lines = capsys.readouterr().out.splitlines()
    counted = [line for line in lines if line.startswith("[")]
    assert [line[:5] for line in counted] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], lines
    assert [line.split(":")[0][6:] for line in counted[:2]] == ["mlp-small seed 2", "mlp-small seed 3"]
    assert "      mlp-small seed 1: resuming after epoch 1" in lines


def test_a_run_with_another_configuration_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["compare", "--quick", "--models", "mlp", "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 0
    ckpt = out / "runs" / "mlp-e1-s0" / "checkpoint.pt"
    data = json.loads((out / "runs" / "mlp-e1-s0" / "config.json").read_text())
    data["lr"] = 0.5
    import torch

    payload = torch.load(ckpt, weights_only=True)
    payload["config"] = data
    torch.save(payload, ckpt)
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["compare", "--quick", "--models", "mlp", "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_a_setting_left_out_of_a_dict_at_its_default_still_counts():
    """A run of the claims' experiments (permuted pixels, say) is never taken for a plain run, nor the reverse."""
    plain, permuted = TrainConfig(model="mlp"), TrainConfig(model="mlp", permute=0)
    assert config_differences(plain.to_dict(), plain) == []
    assert config_differences(permuted.to_dict(), plain) == ["permute 0 there, None in this study"]
    assert config_differences(plain.to_dict(), permuted) == ["permute None there, 0 in this study"]


def extend_by_hand(run_dir, epochs):
    """What `train --resume RUN --epochs N` leaves in a run's checkpoint: a config of N epochs, and their metrics."""
    import torch

    path = run_dir / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["epochs"] = epochs
    last = payload["metrics"][-1]
    payload["metrics"] += [dict(last, epoch=e) for e in range(last["epoch"] + 1, epochs + 1)]
    torch.save(payload, path)


def test_a_run_extended_by_hand_is_named_with_what_to_do(tmp_path, capsys):
    out = tmp_path / "study"
    command = [
        "compare",
        "--quick",
        "--models",
        "mlp-small",
        "--seeds",
        "3",
        "--epochs",
        "1",
        "--jobs",
        "1",
        "--out",
        str(out),
    ]
    assert main(command) == 0
    extend_by_hand(out / "runs" / "mlp-small-e1-s1", 2)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    run = out / "runs" / "mlp-small-e1-s1"
    assert f"{run} holds a run with another configuration (epochs 2 there, 1 in this study)" in err[0]
    assert "mlp-small-e1-s0" not in err[0] and "mlp-small-e1-s2" not in err[0]
    assert err[0].endswith("move or remove it to train this study's run there, or choose another --out")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    extend_by_hand(out / "runs" / "mlp-small-e1-s2", 3)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "mlp-small-e1-s1 holds a run" in err and "and so do 1 more in" in err and "(mlp-small-e1-s2)" in err
    assert "move or remove them to train this study's runs there" in err

    shutil.move(out / "runs" / "mlp-small-e1-s1", tmp_path / "extended-s1")
    shutil.rmtree(out / "runs" / "mlp-small-e1-s2")
    assert main(command) == 0  # as the message says


def test_quick_supplies_only_the_flags_not_given(tmp_path):
    def ran(*flags):
        out = tmp_path / "-".join(flags)
        assert main(["compare", "--quick", "--models", "mlp-small", "--jobs", "1", "--out", str(out), *flags]) == 0
        results = json.loads((out / "results.json").read_text())
        return results["seeds"], results["epochs"], [len(r["metrics"]) for r in results["runs"]]

    assert ran() == (1, 1, [1])
    assert ran("--epochs", "3", "--seeds", "2") == (2, 3, [3, 3])
    assert ran("--seeds", "2") == (2, 1, [1, 1])


def test_help_and_the_study_line_read_as_english(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the default study: lenet5 mlp mlp-small" in help_text and "['lenet5'" not in help_text

    assert small_study(tmp_path / "a") == 0
    assert "study: 1 configuration x 1 seed x 1 epoch on mnist" in capsys.readouterr().out
    assert (
        main(
            [
                "compare",
                "--quick",
                "--models",
                "mlp-small",
                "mlp",
                "--seeds",
                "2",
                "--epochs",
                "2",
                "--jobs",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert "study: 2 configurations x 2 seeds x 2 epochs on mnist" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags", [["--models", "resnet"], ["--seeds", "0"], ["--epochs", "-1"], ["--threads", "0"], ["--jobs", "0"]]
)
def test_bad_flags(tmp_path, capsys, flags):
    assert main(["compare", *flags, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "s").exists()


def test_parallel_runs_give_the_same_numbers(tmp_path, synthetic_data):
    """Runs trained two at a time in worker processes, one thread each, compute what one thread computes here.
    The study is called without the report that `mnistlab compare` writes after it: this is about the numbers."""
    variants, quiet = [CONFIGURATIONS["lenet5"], CONFIGURATIONS["mlp-small"]], io.StringIO()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = mnistlab.study.study(
            variants, 1, 1, "mnist", tmp_path / "serial", synthetic_data, "cpu", jobs=1, status=quiet
        )
        torch.set_num_threads(2)
        parallel = mnistlab.study.study(
            variants, 1, 1, "mnist", tmp_path / "parallel", synthetic_data, "cpu", jobs=2, status=quiet
        )
    finally:
        torch.set_num_threads(threads)
    strip = lambda runs: [[{k: v for k, v in m.items() if "second" not in k} for m in r["metrics"]] for r in runs]  # noqa: E731
    assert strip(serial["runs"]) == strip(parallel["runs"])
    assert (parallel["machine"]["jobs"], parallel["machine"]["threads_per_run"]) == (2, 1)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_status_line_follows_the_runs_going_and_their_epochs(tmp_path, synthetic_data, capsys):
    terminal = FakeTerminal()
    variants = [CONFIGURATIONS["lenet5"], CONFIGURATIONS["mlp-small"]]
    mnistlab.study.study(variants, 1, 2, "mnist", tmp_path, synthetic_data, "cpu", jobs=1, status=terminal)
    shown = terminal.getvalue().split("\r\033[K")
    for run in ("lenet5 seed 0", "mlp-small seed 0"):
        assert any(f"going: {run} epoch 1/2" in line for line in shown), shown
        assert any(f"going: {run} epoch 2/2" in line for line in shown), shown
    assert any(line.startswith("1/2 runs done, elapsed ") and "left ~" in line for line in shown), shown
    assert shown[-1] == ""  # cleared at the end
    out = capsys.readouterr().out  # the finished runs still get their lines, on stdout
    assert "[1/2]" in out and "[2/2]" in out and "left ~" in out


def test_workers_report_the_start_each_epoch_and_the_end_of_their_runs(tmp_path, synthetic_data, progress_events):
    calls = progress_events
    variants = [CONFIGURATIONS["lenet5"], CONFIGURATIONS["mlp-small"]]
    mnistlab.study.study(variants, 1, 2, "mnist", tmp_path, synthetic_data, "cpu", jobs=2, status=io.StringIO())
    for i in (0, 1):  # in the order each worker sent them
        assert [kind for kind, run in calls if run == i] == ["start", "epoch", "epoch", "end"], calls


def test_no_status_line_where_there_is_no_terminal(tmp_path, synthetic_data):
    pipe = io.StringIO()
    mnistlab.study.study([CONFIGURATIONS["mlp-small"]], 1, 1, "mnist", tmp_path, synthetic_data, "cpu", status=pipe)
    assert pipe.getvalue() == ""


# ---------------------------------------------------------------- Ctrl-C, in a real process


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes left from /proc")


def session_processes(sid: int) -> list[int]:
    """The processes of session `sid` still running (zombies aside), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _group, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(session) == sid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Study:
    """`mnistlab compare` on synthetic data in its own session, as a terminal would run it: two runs at a time."""

    def __init__(self, tmp_path, seeds: int, epochs: int, models: tuple[str, ...] = ("lenet5",), stack: bool = False):
        self.out, self.log, self.epochs = tmp_path / "study", tmp_path / "log", epochs
        self.command = [
            *synthetic_command(9000, 500),
            "compare",
            "--models",
            *models,
            "--seeds",
            str(seeds),
            "--epochs",
            str(epochs),
            "--jobs",
            "2",
            "--threads",
            "2",
            "--out",
            str(self.out),
            *([] if stack else ["--no-stack"]),
        ]
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        with open(self.log, "w") as log:
            return subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_checkpoints(self, n: int) -> None:
        wait_until(lambda: len(self.checkpoints()) >= n or self.process.poll() is not None, 300, "no epoch finished")
        assert self.process.poll() is None, self.output()

    def checkpoints(self) -> list[Path]:
        return list(self.out.glob("runs/*/checkpoint.pt"))

    def epochs_kept(self) -> dict[str, int]:
        return {
            d.name: len(load_checkpoint(d)["metrics"]) if (d / "checkpoint.pt").exists() else 0
            for d in (self.out / "runs").iterdir()
        }

    def interrupt(self) -> float:
        """SIGINT to the whole process group, as Ctrl-C sends it; returns when it was sent."""
        os.killpg(self.process.pid, signal.SIGINT)
        return time.monotonic()

    def interrupt_twice(self, gap: float, bound: float) -> None:
        """Ctrl-C, then Ctrl-C again `gap` s later if it is still running: it must then exit within
        `bound` s, say how to resume, and leave no process."""
        self.interrupt()
        time.sleep(gap)
        running = self.process.poll() is None
        second = self.interrupt() if running else None
        rc = self.process.wait(timeout=60)
        if running:
            assert time.monotonic() - second < bound
        assert rc in (130, -signal.SIGINT), self.output()
        assert "rerun the same command to resume" in self.output()
        self.assert_no_process_left()

    def kill(self) -> None:
        """After the test, whatever happened: leave no process behind."""
        for pid in session_processes(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.poll()

    def assert_no_process_left(self) -> None:
        # The resource tracker leaves on its own once compare and its workers are gone.
        sid = self.process.pid
        wait_until(lambda: not session_processes(sid), 5, f"left running: {session_processes(sid)}")


@pytest.fixture
def studies():
    started = []
    yield started
    for s in started:
        s.kill()


@needs_proc
def test_ctrl_c_stops_the_runs_going_at_once_and_starts_no_other(tmp_path, studies):
    study = Study(tmp_path, seeds=3, epochs=8)  # two runs going, one waiting
    studies.append(study)
    study.wait_for_checkpoints(2)
    before = study.epochs_kept()
    sent = study.interrupt()
    assert study.process.wait(timeout=60) == 130
    assert time.monotonic() - sent < 15
    kept = study.epochs_kept()
    assert kept.keys() == before.keys(), "a run started after Ctrl-C"
    for name, n in kept.items():
        assert 1 <= before[name] <= n <= before[name] + 1, (name, before, kept)  # stopped at once
    assert not list(study.out.rglob("*.tmp"))
    assert "rerun the same command to resume" in study.output()
    study.assert_no_process_left()


@needs_proc
def test_a_second_ctrl_c_exits_at_once_and_the_rerun_resumes(tmp_path, studies):
    study = Study(tmp_path, seeds=2, epochs=3)
    studies.append(study)
    study.wait_for_checkpoints(1)
    study.interrupt_twice(gap=1.5, bound=5)
    kept = study.epochs_kept()
    assert max(kept.values()) >= 1
    before = {d.name: load_checkpoint(d)["metrics"] for d in study.out.glob("runs/*") if (d / "checkpoint.pt").exists()}

    again = subprocess.run(study.command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    results = json.loads((study.out / "results.json").read_text())
    assert [len(r["metrics"]) for r in results["runs"]] == [study.epochs] * 2
    assert "resuming after epoch" in again.stdout
    for name, metrics in before.items():
        if len(metrics) < study.epochs:
            assert f"resuming after epoch {len(metrics)}" in again.stdout
        run = next(r for r in results["runs"] if r["run_dir"] == f"runs/{name}")
        assert run["metrics"][: len(metrics)] == metrics  # the finished epochs were kept, not trained again


@needs_proc
def test_a_second_ctrl_c_while_the_workers_start_exits_at_once(tmp_path, studies):
    study = Study(tmp_path, seeds=2, epochs=3)
    studies.append(study)
    # multiprocessing flushes stdout as it starts the workers: they are importing torch now
    wait_until(lambda: "runs to train" in study.output() or study.process.poll() is not None, 120, "no start")
    time.sleep(0.3)
    study.interrupt_twice(gap=0.5, bound=3)


@needs_proc
def test_no_worker_outlives_a_killed_study(tmp_path, studies):
    study = Study(tmp_path, seeds=2, epochs=3)
    studies.append(study)
    wait_until(
        lambda: len(list(study.out.glob("runs/*/config.json"))) == 2 or study.process.poll() is not None,
        300,
        "no run started",
    )
    os.kill(study.process.pid, signal.SIGKILL)
    study.process.wait(10)
    study.assert_no_process_left()


def test_the_seeds_of_an_arm_that_stacks_train_together_reuse_and_resume(tmp_path, capsys, fit_calls, monkeypatch):
    import torch

    import mnistlab.fast.stacked

    stacked_calls = []
    real = mnistlab.fast.stacked.fit_stacked

    def counting(configs, *a, **k):
        stacked_calls.append([(c.model, c.seed) for c in configs])
        return real(configs, *a, **k)

    monkeypatch.setattr(mnistlab.fast.stacked, "fit_stacked", counting)
    out = tmp_path / "study"
    assert study(out) == 0
    # LeNet-5 and LeNet-5 + dropout stack on a CPU, the MLP does not (mnistlab.fast.stacked.stacks_on_cpu), and says so
    assert sorted(stacked_calls) == [[("lenet5", 0), ("lenet5", 1)], [("lenet5-dropout", 0), ("lenet5-dropout", 1)]]
    assert sorted(fit_calls) == [("mlp", False, 0), ("mlp", False, 1)]
    said = capsys.readouterr().out
    why = "a fully connected model trains no faster stacked on a CPU"
    assert f"not stacked, seeds trained one by one ({why}): mlp\n" in said
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["stack"] is True
    for run in results["runs"]:  # ordinary run directories, whatever trained them
        assert read_metrics_csv(out / run["run_dir"] / "metrics.csv")[-1]["test_acc"] == pytest.approx(
            run["metrics"][-1]["test_acc"], abs=1e-6
        )
    assert study(out) == 0 and len(stacked_calls) == 2 and len(fit_calls) == 2  # all reused
    # one seed of an arm lost its last epoch: it resumes alone, as an ordinary run, from its stacked checkpoint
    ckpt_path = out / "runs" / "lenet5-e2-s1" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["metrics"], ckpt["epoch"] = ckpt["metrics"][:1], 1
    torch.save(ckpt, ckpt_path)
    capsys.readouterr()
    assert study(out) == 0
    assert len(stacked_calls) == 2 and fit_calls[2:] == [("lenet5", False, 1)]
    assert "lenet5 seed 1: resuming after epoch 1" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    # the same computation in another order for its last epoch: equal up to a flipped image or two of 300
    assert again["summary"]["lenet5"]["test_acc"]["mean"] == pytest.approx(
        results["summary"]["lenet5"]["test_acc"]["mean"], abs=0.01
    )


@needs_proc
def test_ctrl_c_stops_stacked_seeds_at_once_and_the_rerun_resumes_them(tmp_path, studies):
    study = Study(tmp_path, seeds=2, epochs=3, models=("lenet5", "mlp-small"), stack=True)  # lenet5's two seeds stacked
    studies.append(study)
    wait_until(
        lambda: len(list(study.out.glob("runs/lenet5-*/checkpoint.pt"))) == 2 or study.process.poll() is not None,
        300,
        "no stacked epoch finished",
    )
    before = study.epochs_kept()
    sent = study.interrupt()
    assert study.process.wait(timeout=60) == 130
    assert time.monotonic() - sent < 15
    kept = study.epochs_kept()
    for name in ("lenet5-e3-s0", "lenet5-e3-s1"):  # both seeds stopped together, each at its last finished epoch
        assert 1 <= before[name] <= kept[name] <= before[name] + 1, (before, kept)
    assert kept["lenet5-e3-s0"] == kept["lenet5-e3-s1"] < 3
    assert not list(study.out.rglob("*.tmp"))
    study.assert_no_process_left()
    again = subprocess.run(study.command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"lenet5 seed 1: resuming after epoch {kept['lenet5-e3-s1']}" in again.stdout
    results = json.loads((study.out / "results.json").read_text())
    assert [len(r["metrics"]) for r in results["runs"]] == [3] * 4


# --- the study's training settings, and configurations declared ---------------------------------


def test_training_settings_reach_every_run_results_json_the_report_and_its_command(tmp_path, capsys):
    out = tmp_path / "study"
    flags = ["--quick", "--models", "lenet5", "mlp", "--batch-size", "128", "--lr", "0.02", "--jobs", "1"]
    assert main(["compare", *flags, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        saved = json.loads((out / run["run_dir"] / "config.json").read_text())
        assert (saved["batch_size"], saved["lr"]) == (128, 0.02), run["run_dir"]
    assert (results["config"]["batch_size"], results["config"]["lr"]) == (128, 0.02)
    assert results["config"]["momentum"] == TrainConfig.momentum  # the settings not given keep their defaults
    assert all(v["settings"] == {} for v in results["variants"].values())  # no configuration differs from the others
    report = (out / "REPORT.md").read_text()
    settings_line = next(line for line in report.splitlines() if line.startswith("Training settings of every run"))
    assert "batch size 128 (default 64)" in settings_line and "peak lr 0.02 (default 0.01)" in settings_line

    # the footer's command is the study's: run again, it trains nothing and writes the same settings
    command = re.search(r"Produced by `([^`]*)`", report).group(1)
    assert command == results["command"] and command.startswith("mnistlab compare --quick --models lenet5 mlp ")
    capsys.readouterr()
    assert main(shlex.split(command)[1:]) == 0
    assert "0 of 2 runs to train, 2 reused" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["config"] == results["config"]


def test_a_study_takes_training_settings_from_python(tmp_path, synthetic_data):
    train = {"batch_size": 128, "lr": 0.02}
    config = StudyConfig(
        models=("mlp-small",), seeds=1, epochs=1, out=str(tmp_path / "s"), jobs=1, experiments=claims.QUICK, train=train
    )
    results = run_study(config, synthetic_data)
    saved = json.loads((tmp_path / "s" / results["runs"][0]["run_dir"] / "config.json").read_text())
    assert (saved["batch_size"], saved["lr"]) == (128, 0.02)
    assert (results["config"]["batch_size"], results["config"]["lr"]) == (128, 0.02)
    assert "batch size 128 (default 64)" in (tmp_path / "s" / "REPORT.md").read_text()
    flags = f"--quick --models mlp-small --seeds 1 --epochs 1 --out {tmp_path / 's'} --jobs 1"
    flags += " --batch-size 128 --lr 0.02"
    assert results["command"] == f"mnistlab compare {flags}"
    assert StudyConfig(train={"lr": 0.1}).directory == Path("reports/mnist-lr-0.1")
    assert StudyConfig(epochs=20, train={"lr": 0.1}).directory == Path("reports/mnist-e20-lr-0.1")
    assert StudyConfig(epochs=20, out="elsewhere").directory == Path("elsewhere")


BAD_TRAINING_SETTINGS = [
    ({"seed": 1}, "the study sets it"),
    ({"batch_szie": 128}, "no such field"),
    ({"batch_size": 0}, "batch-size"),
    ({"optimizer": "adam", "nesterov": True}, "nesterov"),
]


@pytest.mark.parametrize("train, message", BAD_TRAINING_SETTINGS)
def test_bad_training_settings_of_a_study(train, message):
    with pytest.raises(UserError, match=message):
        StudyConfig(train=train)


def test_a_model_added_at_run_time_is_named_and_picked_by_its_declarations(tmp_path, monkeypatch, synthetic_data):
    """A wider LeNet-5, registered as a student would add it, through a study: its label in the report and on the page,
    and the report's picks, and the choice to stack, follow what it declares, not its name or its layers."""
    from mnistlab.server import load_served_models

    wide = Registered(partial(LeNet5, channels=(12, 32)), "LeNet-5, 12 and 32 channels", CONVOLUTIONAL)
    monkeypatch.setitem(MODELS, "lenet5-wide", wide)
    declared = Configuration("lenet5-wide", "lenet5-wide", "wide LeNet-5", BASELINE)
    monkeypatch.setitem(CONFIGURATIONS, "lenet5-wide", declared)
    out = tmp_path / "study"
    models = ("mlp", "lenet5-wide")
    config = StudyConfig(models=models, seeds=1, epochs=1, out=str(out), jobs=1, experiments=claims.QUICK)
    results = run_study(config, synthetic_data)
    assert results["variants"]["lenet5-wide"]["family"] == CONVOLUTIONAL
    report = (out / "REPORT.md").read_text()
    assert "| wide LeNet-5 | " in report and "**lenet5-wide** (LeNet-5, 12 and 32 channels)" in report
    assert "among the convolutional configurations: wide LeNet-5 seed 0" in report
    analysis = report.split("## 6. Analysis")[1]
    assert "wide LeNet-5" in analysis and "MLP 500-150" in analysis  # the two baselines compared
    (served,) = load_served_models([out / "runs" / "lenet5-wide-e1-s0"])
    assert served.label == "LeNet-5, 12 and 32 channels"
    assert worth_stacking(TrainConfig(model="lenet5-wide"), torch.device("cpu"))

    # declared fully connected, the same model is no longer a convolutional pick, nor stacked on a CPU
    monkeypatch.setitem(MODELS, "lenet5-wide", replace(wide, family=FULLY_CONNECTED))
    results = run_study(config, synthetic_data)  # its run is reused; only what is read from the declarations changes
    assert results["variants"]["lenet5-wide"]["family"] == FULLY_CONNECTED
    assert "No convolutional configuration in this study." in (out / "REPORT.md").read_text()
    assert not worth_stacking(TrainConfig(model="lenet5-wide"), torch.device("cpu"))


# --- damaged study files ----------------------------------------------------------------------------


def small_study(out, *extra):
    return main(
        [
            "compare",
            "--quick",
            "--models",
            "mlp-small",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--jobs",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_results_json_as_a_directory_is_one_line_and_the_runs_are_kept(tmp_path, capsys):
    (tmp_path / "study" / "results.json").mkdir(parents=True)
    assert small_study(tmp_path / "study") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "results.json: is a directory where mnistlab writes a file; move or remove it" in line
    assert (tmp_path / "study" / "runs" / "mlp-small-e1-s0" / "checkpoint.pt").is_file()


def test_a_truncated_checkpoint_in_a_study_names_the_directory_to_remove(tmp_path, capsys):
    assert small_study(tmp_path / "study") == 0
    run_dir = tmp_path / "study" / "runs" / "mlp-small-e1-s0"
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert small_study(tmp_path / "study") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "damaged" in line and line.endswith(f"remove {run_dir} to train this run again")


@pytest.mark.parametrize("name", ["config.json", "metrics.csv"])
def test_a_damaged_config_or_metrics_beside_a_good_checkpoint_is_rewritten_from_it(tmp_path, capsys, name):
    assert small_study(tmp_path / "study") == 0
    run_dir = tmp_path / "study" / "runs" / "mlp-small-e1-s0"
    good = (run_dir / name).read_text()
    (run_dir / name).write_text(good[: len(good) // 2] + "\x00garbage")
    capsys.readouterr()
    assert small_study(tmp_path / "study") == 0
    assert (run_dir / name).read_text() == good
    assert f"{run_dir / name}: did not match checkpoint.pt; rewritten from it" in capsys.readouterr().out
    assert small_study(tmp_path / "study") == 0  # an intact run is left alone
    assert "rewritten" not in capsys.readouterr().out
