import io
import json
import re

import pytest

import mnistlab.compare as compare
import mnistlab.train
from mnistlab.cli import main
from mnistlab.compare import VARIANTS
from mnistlab.report import analysis, pct, summarize
from mnistlab.train import read_metrics_csv
from synthetic import use_synthetic_data

ARMS = ["lenet5", "mlp", "lenet5-dropout"]


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 5400, 300)  # the default 5,000 validation images leave 400 to train on


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    real = mnistlab.train.fit

    def counting_fit(config, *a, **k):
        calls.append((config.model, config.augment, config.seed))
        return real(config, *a, **k)

    monkeypatch.setattr(mnistlab.train, "fit", counting_fit)
    return calls


def study(out, *extra):
    return main(["compare", "--models", *ARMS, "--seeds", "2", "--epochs", "2", "--threads", "1", "--jobs", "1",
                 "--out", str(out), *extra])  # fmt: skip


def test_study_writes_every_part_and_the_numbers_agree(tmp_path, capsys):
    out = tmp_path / "study"
    assert study(out) == 0
    for name in ("results.json", "REPORT.md", "training_testing_metrics.png", "confusion_best_lenet5.png", "mistakes_best_lenet5.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    report = (out / "REPORT.md").read_text()
    for number, title in enumerate(["Parameters", "Performance", "curves", "Regularization", "Published reference",
                                    "confusion matrix", "Analysis"], 1):  # fmt: skip
        assert re.search(rf"^## {number}\. .*{title}", report, re.M | re.I), title
    assert len(results["runs"]) == 6 and {r["variant"] for r in results["runs"]} == set(ARMS)

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


def test_a_run_with_another_configuration_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["compare", "--models", "mlp", "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 0
    ckpt = out / "runs" / "mlp-e1-s0" / "checkpoint.pt"
    data = json.loads((out / "runs" / "mlp-e1-s0" / "config.json").read_text())
    data["lr"] = 0.5
    import torch

    payload = torch.load(ckpt, weights_only=True)
    payload["config"] = data
    torch.save(payload, ckpt)
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["compare", "--models", "mlp", "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "flags", [["--models", "resnet"], ["--seeds", "0"], ["--epochs", "-1"], ["--threads", "0"], ["--jobs", "0"]]
)
def test_bad_flags(tmp_path, capsys, flags):
    assert main(["compare", *flags, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "s").exists()


def summary_of(arms):
    """A hand-made summary: name -> (test, validation, train accuracy, parameters), std 0.1 point, 3 seeds."""

    def stat(mean):
        return {"mean": mean, "std": 0.001, "n": 3}

    return {name: {"test_acc": stat(test), "val_acc": stat(val), "train_acc": stat(train), "gap": stat(train - val),
                   "parameters": params} for name, (test, val, train, params) in arms.items()}  # fmt: skip


LABELS = {"lenet5": "LeNet-5", "mlp": "MLP", "mlp-small": "small MLP", "lenet5-bn": "BN", "lenet5-dropout": "DO"}


def test_analysis_follows_the_numbers():
    lenet_wins = summary_of({"lenet5": (0.991, 0.989, 0.998, 44_426), "mlp": (0.981, 0.979, 0.999, 469_160),
                             "lenet5-bn": (0.992, 0.9895, 0.997, 44_448)})  # fmt: skip
    text = " ".join(analysis(lenet_wins, LABELS))
    assert "LeNet-5 beats MLP" in text and "10.6x as many parameters" in text
    assert "by 1.00 points" in text and "larger than the seed-to-seed spread" in text
    assert "BN makes no difference beyond the seed-to-seed spread" in text

    mlp_wins = summary_of({"lenet5": (0.981, 0.979, 0.99, 44_426), "mlp": (0.991, 0.989, 0.999, 469_160),
                           "lenet5-bn": (0.970, 0.960, 0.99, 44_448)})  # fmt: skip
    text = " ".join(analysis(mlp_wins, LABELS))
    assert "MLP beats LeNet-5" in text and "BN hurts" in text

    close = summary_of({"lenet5": (0.9900, 0.989, 0.99, 44_426), "mlp": (0.9895, 0.9885, 0.99, 469_160)})
    assert "within the seed-to-seed spread" in " ".join(analysis(close, LABELS))


def test_parallel_runs_give_the_same_numbers(tmp_path):
    common = ["compare", "--models", "lenet5", "mlp-small", "--seeds", "2", "--epochs", "1"]
    assert main([*common, "--threads", "1", "--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--threads", "2", "--jobs", "2", "--out", str(tmp_path / "parallel")]) == 0
    serial, parallel = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("serial", "parallel"))
    strip = lambda runs: [[{k: v for k, v in m.items() if "second" not in k} for m in r["metrics"]] for r in runs]  # noqa: E731
    assert strip(serial["runs"]) == strip(parallel["runs"])
    assert parallel["machine"]["jobs"] == 2


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_status_line_follows_the_runs_going_and_their_epochs(tmp_path, synthetic_data, capsys):
    terminal = FakeTerminal()
    variants = [VARIANTS["lenet5"], VARIANTS["mlp-small"]]
    compare.study(variants, 1, 2, "mnist", tmp_path, synthetic_data, "cpu", jobs=1, status=terminal)
    shown = terminal.getvalue().split("\r\033[K")
    for run in ("lenet5 seed 0", "mlp-small seed 0"):
        assert any(f"going: {run} epoch 1/2" in line for line in shown), shown
        assert any(f"going: {run} epoch 2/2" in line for line in shown), shown
    assert any(line.startswith("1/2 runs done, elapsed ") and "left ~" in line for line in shown), shown
    assert shown[-1] == ""  # cleared at the end
    out = capsys.readouterr().out  # the finished runs still get their lines, on stdout
    assert "[1/2]" in out and "[2/2]" in out and "left ~" in out


def test_workers_report_the_start_each_epoch_and_the_end_of_their_runs(tmp_path, synthetic_data, monkeypatch):
    calls = []

    class Recording(compare.Progress):
        def started(self, i):
            calls.append(("start", i))
            super().started(i)

        def epoch_done(self, i):
            calls.append(("epoch", i))
            super().epoch_done(i)

        def ended(self, i):
            calls.append(("end", i))
            super().ended(i)

    monkeypatch.setattr(compare, "Progress", Recording)
    variants = [VARIANTS["lenet5"], VARIANTS["mlp-small"]]
    compare.study(variants, 1, 2, "mnist", tmp_path, synthetic_data, "cpu", jobs=2, status=io.StringIO())
    for i in (0, 1):  # in the order each worker sent them
        assert [kind for kind, run in calls if run == i] == ["start", "epoch", "epoch", "end"], calls


def test_no_status_line_where_there_is_no_terminal(tmp_path, synthetic_data):
    pipe = io.StringIO()
    compare.study([VARIANTS["mlp-small"]], 1, 1, "mnist", tmp_path, synthetic_data, "cpu", status=pipe)
    assert pipe.getvalue() == ""


def test_the_seeds_of_an_arm_that_stacks_train_together_reuse_and_resume(tmp_path, capsys, fit_calls, monkeypatch):
    import mnistlab.stacked
    import torch

    stacked_calls = []
    real = mnistlab.stacked.fit_stacked

    def counting(configs, *a, **k):
        stacked_calls.append([(c.model, c.seed) for c in configs])
        return real(configs, *a, **k)

    monkeypatch.setattr(mnistlab.stacked, "fit_stacked", counting)
    out = tmp_path / "study"
    assert study(out) == 0
    # LeNet-5 and LeNet-5 + dropout stack on a CPU, the MLP does not (mnistlab.stacked.CPU_STACKED_MODELS)
    assert sorted(stacked_calls) == [[("lenet5", 0), ("lenet5", 1)], [("lenet5-dropout", 0), ("lenet5-dropout", 1)]]
    assert sorted(fit_calls) == [("mlp", False, 0), ("mlp", False, 1)]
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["stack"] is True
    for run in results["runs"]:  # ordinary run directories, whatever trained them
        assert read_metrics_csv(out / run["run_dir"] / "metrics.csv")[-1]["test_acc"] == pytest.approx(run["metrics"][-1]["test_acc"], abs=1e-6)
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
    assert again["summary"]["lenet5"]["test_acc"]["mean"] == pytest.approx(results["summary"]["lenet5"]["test_acc"]["mean"], abs=0.01)
