"""claims.py and the experiments it adds to the study, on synthetic data."""

import json

import numpy as np
import pytest
import torch
from synthetic import make_arrays, use_synthetic_data

import mnistlab.study
from mnistlab import claims
from mnistlab.claims import (
    CONTRADICTED,
    NOT_SETTLED,
    SUPPORTED,
    ClaimTest,
    overall,
    robustness,
    rotate_images,
    shift_images,
    steps_to,
    subset_passes,
)
from mnistlab.cli import main
from mnistlab.configurations import EXPERIMENT, MATCHED, Configuration
from mnistlab.engine import TrainingFailed, evaluate
from mnistlab.errors import UserError
from mnistlab.models import create_model
from mnistlab.splits import pixel_permutation


def test_a_study_takes_the_experiments_sizes_as_a_scale():
    assert mnistlab.study.StudyConfig().experiments == claims.FULL
    with pytest.raises(UserError, match="experiments must be a claims.Scale"):
        mnistlab.study.StudyConfig(experiments="quick")


def test_the_budget_rule():
    assert subset_passes(500, 10, 500, 64) == 63  # 8 steps a pass: 63 passes make 504 steps
    assert subset_passes(5000, 10, 500, 64) == 10  # 79 steps a pass: 10 passes make 790, past the minimum
    assert subset_passes(64, 2, 3, 64) == 3


# ---------------------------------------------------------------- moved digits


def test_shift_moves_whole_pixels_and_fills_with_black():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert torch.equal(shift_images(images, 0, 0), images)
    moved = shift_images(images, 2, -3)
    assert torch.equal(moved[:, :25, 2:], images[:, 3:, :26])
    assert not moved[:, 25:, :].any() and not moved[:, :, :2].any()
    assert not shift_images(images, 28, 0).any()


def test_rotation_turns_counter_clockwise_and_zero_is_a_copy():
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    assert torch.equal(rotate_images(images, 0), images)
    assert torch.equal(rotate_images(images, 90), torch.rot90(images, 1, dims=(1, 2)))
    blob = torch.zeros(1, 28, 28, dtype=torch.uint8)
    blob[0, 22:25, 13:15] = 255  # below the centre: a quarter turn counter-clockwise takes it to the right
    ys, xs = torch.nonzero(rotate_images(blob, 90)[0], as_tuple=True)
    assert xs.float().mean() > 20 and abs(ys.float().mean() - 13.5) < 1


def test_a_shift_of_zero_reproduces_the_unshifted_accuracy():
    arrays = make_arrays(10, 200)
    images, labels = torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels).long()
    torch.manual_seed(0)
    models = {"a": create_model("lenet5").eval(), "b": create_model("mlp-small").eval()}
    found = robustness(models, images, labels)
    for key, model in models.items():
        plain = evaluate(model, images, labels)[1]
        assert found[key]["shift"][0] == plain and found[key]["rotation"][0] == plain
        assert len(found[key]["shift"]) == len(claims.SHIFTS) and len(found[key]["rotation"]) == len(claims.ANGLES)
        # a shift is the mean over the four directions
        by_hand = np.mean(
            [evaluate(model, shift_images(images, dx, dy), labels)[1] for dx, dy in ((3, 0), (-3, 0), (0, 3), (0, -3))]
        )
        assert found[key]["shift"][3] == pytest.approx(by_hand)


def test_the_moved_digits_are_tested_on_the_studys_device(tmp_path, monkeypatch):
    # On a GPU the study's models are tested there, not on one CPU thread (11.6 s of the 87 s that the
    # default study took on an H200, benchmarks/RESULTS.md). `meta` stands in for the GPU: a CPU
    # tensor mixed into a computation on it raises.
    arrays = make_arrays(10, 40)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    seen = []

    def load_model(path, device="cpu"):
        seen.append(("model", torch.device(device)))
        return create_model("mlp-small").to(device).eval(), {}

    def evaluate(model, images, labels, batch_size=1000):
        seen.append(("images", images.device))
        assert labels.device == images.device and next(model.parameters()).device == images.device
        return 0.0, 0.5  # what `meta` cannot compute

    monkeypatch.setattr(claims, "load_model", load_model)
    monkeypatch.setattr(claims, "evaluate", evaluate)
    runs = [{"run_dir": "runs/a", "metrics": [{}]}]
    found = claims.run_robustness(tmp_path, runs, arrays, claims.QUICK, log=lambda line: None, device="meta")
    assert found["runs/a"]["shift"] == [0.5] * len(claims.SHIFTS)
    assert {device.type for _, device in seen} == {"meta"} and ("model", torch.device("meta")) in seen


# ---------------------------------------------------------------- speed and verdicts


def test_steps_to_a_threshold_are_interpolated_between_evaluations():
    metrics = [
        {"epoch": 1, "val_acc": 0.90, "epoch_seconds": 2.0},
        {"epoch": 2, "val_acc": 0.96, "epoch_seconds": 4.0},
        {"epoch": 3, "val_acc": 0.95, "epoch_seconds": 4.0},
    ]
    steps, seconds = steps_to(metrics, 0.93, 100, chance=0.1)
    assert steps == pytest.approx(150) and seconds == pytest.approx(4.0)
    steps, seconds = steps_to(metrics, 0.50, 100, chance=0.1)  # within the first epoch, from chance at step 0
    assert steps == pytest.approx(50) and seconds == pytest.approx(1.0)
    assert steps_to(metrics, 0.97, 100, chance=0.1) is None


def stat(mean, std=0.001, n=3):
    return {"mean": mean, "std": std, "n": n}


@pytest.mark.parametrize(
    "a, b, expect, verdict",
    [
        (stat(0.99), stat(0.98), +1, SUPPORTED),
        (stat(0.99), stat(0.98), -1, CONTRADICTED),
        (stat(0.9805), stat(0.98), +1, NOT_SETTLED),
        (stat(0.99, n=1), stat(0.98), +1, NOT_SETTLED),
    ],
)
def test_a_verdict_is_the_difference_against_the_spread_in_the_claimed_direction(a, b, expect, verdict):
    assert ClaimTest("q", "A", "B", a, b, expect, "points").verdict == verdict


def test_steps_compare_in_steps_and_a_claim_needs_no_test_against_it():
    fewer = ClaimTest("steps", "BN", "plain", stat(900, 50), stat(1500, 100), -1, "steps")
    assert fewer.comparison.difference == pytest.approx(-600) and fewer.comparison.spread == pytest.approx(150)
    assert fewer.verdict == SUPPORTED
    against = ClaimTest("q", "A", "B", stat(0.97), stat(0.99), +1, "points")
    unsettled = ClaimTest("q", "A", "B", stat(0.99), stat(0.99), +1, "points")
    assert overall([fewer, unsettled]) == SUPPORTED
    assert overall([against, unsettled]) == CONTRADICTED
    assert overall([fewer, against]) == NOT_SETTLED
    assert overall([unsettled]) == NOT_SETTLED


def run(variant, seed, test_acc, val_acc=0.9, train_acc=0.95):
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": f"runs/{variant}-s{seed}",
        "metrics": [
            {"epoch": 1, "test_acc": test_acc, "val_acc": val_acc, "train_acc": train_acc, "epoch_seconds": 1.0}
        ],
    }


def test_the_spatial_verdict_follows_the_permuted_numbers():
    """LeNet-5 losing more than the MLPs when the pixels are permuted supports the claim; the opposite contradicts it."""
    labels = {"lenet5": "LeNet-5", "mlp": "MLP", "mlp-small": "small MLP"}

    def verdict(lenet_permuted, mlp_permuted):
        main = {
            "lenet5": [run("lenet5", s, 0.99 + s * 1e-4) for s in range(3)],
            "mlp": [run("mlp", s, 0.98 + s * 1e-4) for s in range(3)],
            "mlp-small": [run("mlp-small", s, 0.97 + s * 1e-4) for s in range(3)],
        }
        permuted = {
            "lenet5": [run("p", s, lenet_permuted + s * 2e-4) for s in range(3)],
            "mlp": [run("p", s, mlp_permuted + s * 2e-4) for s in range(3)],
            "mlp-small": [run("p", s, 0.97 - s * 1e-4) for s in range(3)],
        }
        arms = {a: {"drop": claims.differences(main[a], permuted[a], claims.final("test_acc"))} for a in main}
        found = claims.verdicts(main, labels, {"permuted": {"arms": arms}})
        spatial = next(c for c in found if c["claim"] == "spatial")
        return [t.verdict for t in spatial["tests"]][0], spatial["verdict"]

    assert verdict(0.95, 0.98) == (SUPPORTED, SUPPORTED)  # LeNet-5 loses 4 points, the MLP nothing
    assert verdict(0.99, 0.95) == (CONTRADICTED, CONTRADICTED)  # the MLP loses more than LeNet-5
    assert verdict(0.9899, 0.9799)[0] == NOT_SETTLED


# ---------------------------------------------------------------- in the study


@pytest.fixture
def synthetic(monkeypatch):
    return use_synthetic_data(monkeypatch, 5400, 300)  # 400 images to train on beside the 5,000 for validation


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    real = mnistlab.study.fit

    def counting_fit(config, *a, **k):
        calls.append(config)
        return real(config, *a, **k)

    monkeypatch.setattr(mnistlab.study, "fit", counting_fit)
    return calls


def quick(out):
    return main(["compare", "--quick", "--threads", "1", "--jobs", "1", "--out", str(out)])


def test_the_quick_study_has_every_part_and_reuses_them(tmp_path, synthetic, fit_calls, capsys):
    out = tmp_path / "study"
    assert quick(out) == 0
    results = json.loads((out / "results.json").read_text())
    c = results["claims"]
    assert {"permuted", "robustness", "limited", "speed", "rates", "verdicts", "timing"} <= set(c)
    assert "mlp-augment" in results["variants"] and len(results["runs"]) == len(results["variants"])

    # permuted pixels: the three arms, the recorded permutation, trained as their arms (2 passes) on it
    assert c["permuted"]["permutation"] == pixel_permutation(c["permuted"]["permutation_seed"]).tolist()
    assert {r["base"] for r in c["permuted"]["runs"]} == {"lenet5", "mlp", "mlp-small"}
    for r in c["permuted"]["runs"]:
        saved = json.loads((out / r["run_dir"] / "config.json").read_text())
        assert saved["permute"] == c["permuted"]["permutation_seed"] and saved.get("passes", 1) == results["epochs"]

    # moved digits: every arm, in the shape the page reads; a shift of 0 is each run's test accuracy
    rob = c[
        "robustness"
    ]  # {"shift": {"values": [...], "accuracy": {arm: {"mean": [...], "std": [...]}}}, "rotation": ...}
    assert rob["shift"]["values"] == list(claims.SHIFTS) and rob["rotation"]["values"] == list(claims.ANGLES)
    assert set(rob["shift"]["accuracy"]) == set(results["variants"])
    for kind in ("shift", "rotation"):
        for curve in rob[kind]["accuracy"].values():
            assert len(curve["mean"]) == len(curve["std"]) == len(rob[kind]["values"])
    for r in results["runs"]:
        assert rob["per_run"]["shift"][r["run_dir"]][0] == pytest.approx(r["metrics"][-1]["test_acc"], abs=1e-9)

    # limited data: each size below the full split, for the three arms, with the budget rule's steps
    lim = c["limited"]
    assert lim["sizes"] == [*claims.QUICK.subset_sizes, 400]
    for r in lim["runs"]:
        saved = json.loads((out / r["run_dir"] / "config.json").read_text())
        size = saved["train_size"]
        assert saved["passes"] == subset_passes(size, results["epochs"], claims.QUICK.min_steps, 64)
        assert saved["passes"] * -(-size // 64) >= claims.QUICK.min_steps
    assert {r["base"] for r in lim["runs"]} == {"lenet5", "lenet5-all", "mlp"}

    # learning rates: both models at every rate; speed from the arms' curves
    assert {(r["base"], r["settings"]["lr"]) for r in c["rates"]["runs"]} == {
        (a, lr) for a in ("lenet5", "lenet5-bn") for lr in claims.RATES
    }
    assert set(c["speed"]["steps"]) == {"lenet5", "lenet5-bn"}

    # the report: the section, a verdict per claim from its tests, and readable figures
    report = (out / "REPORT.md").read_text()
    section = report.split("## 8. The claims, tested", 1)[1]
    for claim in c["verdicts"]:
        assert claim["verdict"] == overall([_as_test(t) for t in claim["tests"]])
        assert claim["quote"] in section
    for name in ("shift_rotation.png", "limited_data.png", "learning_rates.png", "batch_norm_speed.png"):
        assert (out / name).stat().st_size > 0 and f"]({name})" in section
    assert "| MLP 500-150, distortions / augmentation | 2.45% | not run |" not in report

    # a second invocation trains nothing and writes the same claims
    calls = len(fit_calls)
    assert "x 1 seed, one evaluated epoch each" in capsys.readouterr().out
    assert quick(out) == 0
    assert len(fit_calls) == calls
    again = json.loads((out / "results.json").read_text())["claims"]
    assert again["verdicts"] == c["verdicts"] and again["robustness"]["per_run"] == rob["per_run"]


def _as_test(t: dict) -> ClaimTest:
    return ClaimTest(t["question"], t["a"], t["b"], t["a_stat"], t["b_stat"], t["expect"], t["unit"])


def test_a_run_that_may_stop_is_a_result_and_an_arm_that_stops_is_an_error(tmp_path, synthetic, monkeypatch):
    real = mnistlab.study.fit
    calls = []

    def failing_fit(config, arrays, out_dir, **k):
        calls.append(config)
        if config.lr == 0.3:
            row = {
                "epoch": 1,
                "train_loss": float("nan"),
                "train_acc": 0.1,
                "val_loss": float("nan"),
                "val_acc": 0.1,
                "test_loss": float("nan"),
                "test_acc": 0.1,
                "lr": 0.0,
                "epoch_seconds": 0.1,
                "samples_per_second": 1.0,
            }
            raise TrainingFailed("training stopped at epoch 1: the training loss is nan", history=[row])
        return real(config, arrays, out_dir, **k)

    monkeypatch.setattr(mnistlab.study, "fit", failing_fit)
    probes = []
    for lr in (0.01, 0.3):
        settings = (("lr", lr), ("train_size", 100))
        name, label = f"mlp-small-lr{lr}", f"lr {lr}"
        probes.append(Configuration(name, "mlp-small", label, EXPERIMENT, False, "mlp-small", settings, may_fail=True))
    results = mnistlab.study.study(probes, 1, 1, "mnist", tmp_path, synthetic, "cpu")
    ok, stopped = (r["metrics"][-1] for r in results["runs"])
    assert "failed" not in ok and "loss is nan" in stopped["failed"] and stopped["val_loss"] is None
    assert (tmp_path / results["runs"][1]["run_dir"] / "failed.json").exists()
    assert "NaN" not in json.dumps(results)

    # reused as it is, without training it again
    calls.clear()
    again = mnistlab.study.study(probes, 1, 1, "mnist", tmp_path, synthetic, "cpu")
    assert calls == [] and again["runs"][1]["metrics"] == results["runs"][1]["metrics"]

    # a damaged record is not trusted: the run is trained again, and recorded again
    record = tmp_path / results["runs"][1]["run_dir"] / "failed.json"
    for damaged in ('{"config": {}, "metrics": 3}', "[1, 2]", '{"metrics": [{"epoch": 1}]}', "{not json"):
        saved = json.loads(record.read_text())
        record.write_text(
            damaged.replace('{"config": {}', json.dumps({"config": saved["config"]})[:-1])
            if "config" in damaged
            else damaged
        )
        calls.clear()
        again = mnistlab.study.study(probes, 1, 1, "mnist", tmp_path, synthetic, "cpu")
        assert [c.lr for c in calls] == [0.3] and "failed" in again["runs"][1]["metrics"][-1]

    # a study arm that stops ends the study with its message, now and when it is run again
    arm = [Configuration("mlp-small-fast", "mlp-small", "fast", MATCHED, settings=(("lr", 0.3),))]
    for _ in range(2):
        with pytest.raises(UserError, match="loss is nan"):
            mnistlab.study.study(arm, 1, 1, "mnist", tmp_path, synthetic, "cpu")


def test_the_speed_seconds_say_when_the_seeds_trained_stacked():
    from mnistlab.claims_report import stacked_note

    variants = {"lenet5": {"model": "lenet5"}, "lenet5-bn": {"model": "lenet5-bn"}, "mlp": {"model": "mlp"}}
    results = {
        "seeds": 3,
        "variants": variants,
        "machine": {"device": "cpu", "jobs": 2, "threads_per_run": 1, "stack": True},
    }
    arms = ("lenet5", "lenet5-bn")
    assert "the 3 seeds of each arm together, as one stacked model" in stacked_note(results, arms)
    assert "the 3 seeds of lenet5 together" in stacked_note(
        results, ("lenet5", "mlp")
    )  # the MLP does not stack on a CPU
    for machine in ({"stack": False}, {"cluster": "tcp://127.0.0.1:8786"}):
        assert stacked_note({**results, "machine": {**results["machine"], **machine}}, arms) == ""
    assert stacked_note({**results, "seeds": 1}, arms) == ""
