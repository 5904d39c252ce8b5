"""claims.py and the experiments it adds to the study, on synthetic data."""

import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from synthetic import make_arrays, save_model, use_synthetic_data

import mnistlab.study
from mnistlab import claims
from mnistlab.claims import (
    CONTRADICTED,
    NOT_SETTLED,
    PRIMARY,
    SUPPORTED,
    ClaimTest,
    decide,
    robustness,
    rotate_images,
    run_failed,
    shift_images,
    steps_to,
    subset_passes,
)
from mnistlab.claims_report import how_compared, image_lines
from mnistlab.cli import main
from mnistlab.configurations import EXPERIMENT, MATCHED, Configuration
from mnistlab.engine import TrainingFailed, evaluate
from mnistlab.errors import UserError
from mnistlab.models import create_model
from mnistlab.predictions import write_test_predictions
from mnistlab.splits import pixel_permutation
from mnistlab.stats import mcnemar, paired_difference


def test_a_study_takes_the_experiments_sizes_as_a_scale():
    assert mnistlab.study.StudyConfig().experiments == claims.FULL
    with pytest.raises(UserError, match="experiments must be a claims.Scale"):
        mnistlab.study.StudyConfig(experiments="quick")


def test_the_budget_rule():
    assert subset_passes(500, 1008, 64) == 126  # 8 steps a pass
    assert subset_passes(4000, 1008, 64) == 16  # 63 steps a pass
    assert subset_passes(5000, 1008, 64) == 13  # 79 steps a pass: 1,027 steps, the fewest passes past 1,008
    assert subset_passes(64, 3, 64) == 3


LABELS = {name: name for name in mnistlab.study.DEFAULT_STUDY}


def limited_steps(arms, batch_size=64):
    """{(base, training images): optimizer steps} of the limited-data arms of a plan."""
    steps = {}
    for a in arms:
        if a.experiment == "limited":
            s = dict(a.settings)
            steps[(a.base, s["train_size"])] = s["passes"] * -(-s["train_size"] // batch_size)
    return steps


@pytest.mark.parametrize("scale", [claims.FULL, claims.QUICK], ids=["full", "quick"])
def test_every_training_set_size_gets_the_same_optimizer_steps(scale):
    """Before, a size got at least `epochs` passes, more below a minimum: 504, 504 and 630 steps at 500, 1,500
    and 4,000 images, so that a larger set was also a longer training."""
    arms = claims.plan(list(LABELS), LABELS, 10, 55000, 64, scale)
    steps = limited_steps(arms)
    assert {size for _, size in steps} == set(scale.subset_sizes)
    assert set(steps.values()) == {scale.subset_steps}


def test_each_regularizer_alone_is_planned_at_the_smallest_size():
    arms = claims.plan(list(LABELS), LABELS, 10, 55000, 64, claims.FULL)
    smallest = min(claims.FULL.subset_sizes)
    planned = set(limited_steps(arms))
    for base in claims.ALONE:
        assert (base, smallest) in planned
        assert not any(b == base and size != smallest for b, size in planned)
    for base in claims.EXPERIMENT_ARMS["limited"]:
        assert {size for b, size in planned if b == base} == set(claims.FULL.subset_sizes)
    # without an arm in the study, its runs alone are not planned; the rest of the experiment is
    fewer = [a for a in LABELS if a != "lenet5-dropout"]
    planned = set(limited_steps(claims.plan(fewer, LABELS, 10, 55000, 64, claims.FULL)))
    assert ("lenet5-dropout", smallest) not in planned and ("lenet5-bn", smallest) in planned


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

    def predict_classes(model, images, batch_size=1000):
        seen.append(("images", images.device))
        assert next(model.parameters()).device == images.device
        return torch.zeros(len(images), dtype=torch.long)  # what `meta` cannot compute: every digit a 0

    monkeypatch.setattr(claims, "load_model", load_model)
    monkeypatch.setattr(claims, "predict_classes", predict_classes)
    runs = [{"run_dir": "runs/a", "metrics": [{}]}]
    found = claims.run_robustness(tmp_path, runs, arrays, claims.QUICK, log=lambda line: None, device="meta")
    assert found["runs/a"]["shift"] == [float(np.mean(arrays.test_labels == 0))] * len(claims.SHIFTS)
    assert {device.type for _, device in seen} == {"meta"} and ("model", torch.device("meta")) in seen


# ---------------------------------------------------------------- speed and verdicts


def test_steps_to_a_threshold_are_read_at_measured_evaluations_only():
    """No straight line between evaluations, nor from an assumed (0 steps, chance) start: the answer is the
    first evaluation at or above the threshold, in its own steps and the seconds trained until it."""
    metrics = [
        {"epoch": 1, "val_acc": 0.90, "epoch_seconds": 2.0},
        {"epoch": 2, "val_acc": 0.96, "epoch_seconds": 4.0},
        {"epoch": 3, "val_acc": 0.95, "epoch_seconds": 4.0},
    ]
    assert steps_to(metrics, 0.93, 100) == (200, 6.0)  # interpolating would give 150 steps
    assert steps_to(metrics, 0.50, 100) == (100, 2.0)  # interpolating from chance would give 50 steps
    assert steps_to(metrics, 0.96, 100) == (200, 6.0)  # reached exactly
    assert steps_to(metrics, 0.97, 100) is None
    # a curve that dips: the first evaluation that reaches it counts, not a later one
    dipping = [{"epoch": 1, "val_acc": 0.95, "epoch_seconds": 1.0}, {"epoch": 2, "val_acc": 0.80, "epoch_seconds": 1.0}]
    assert steps_to(dipping, 0.9, 100) == (100, 1.0)


def last(val_acc, val_loss=0.5, train_loss=0.5, **more):
    return {
        "metrics": [
            {"epoch": 1, "val_acc": 0.9, "val_loss": 0.3, "train_loss": 0.3},
            {"epoch": 2, "val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss, **more},
        ]
    }


def test_a_run_that_ends_at_chance_or_with_a_loss_not_finite_has_failed():
    """The learning-rate test's runs that ended at chance (9.4% and 9.8% at lr 0.3) were counted as fine
    because they never stopped; a run fails by where it ends, however often it was evaluated."""
    assert run_failed(last(0.094, val_loss=2.3025, train_loss=2.3026), chance=0.1)
    assert run_failed(last(0.098), chance=0.1)
    assert run_failed(last(0.119), chance=0.1)  # within 2 points of chance
    assert not run_failed(last(0.7254), chance=0.1)
    assert run_failed(last(0.9, val_loss=None), chance=0.1)  # a loss not finite is written as null
    assert run_failed(last(0.9, train_loss=float("inf")), chance=0.1)
    assert run_failed(last(0.9, failed="training stopped: the training loss is nan"), chance=0.1)
    ends = {lr: (0.094, 0.098, 0.7254) if lr == 0.3 else (0.9, 0.9, 0.9) for lr in claims.RATES}
    runs = [
        {**last(acc), "seed": seed, "base": base, "settings": {"lr": lr}}
        for base in ("lenet5", "lenet5-bn")
        for lr in claims.RATES
        for seed, acc in enumerate(ends[lr])
    ]
    counted = claims.rates_summary(runs, chance=0.1)["arms"]["lenet5"]["failed"]
    assert counted == [2 if lr == 0.3 else 0 for lr in claims.RATES]


def values(*xs):
    return dict(enumerate(xs))


def test_a_claim_test_is_paired_when_the_seeds_are_shared_and_welch_otherwise():
    a, b = values(0.990, 0.985, 0.992), values(0.980, 0.979, 0.981)
    paired = ClaimTest("k", "q", "A", "B", a, b, +1, "points").to_dict()
    assert paired["paired"] and paired["n"] == 3
    diffs = [100 * (a[s] - b[s]) for s in range(3)]
    assert paired["difference"] == pytest.approx(np.mean(diffs))
    assert paired["p"] == pytest.approx(scipy_stats.ttest_1samp(diffs, 0).pvalue)
    other_seeds = ClaimTest("k", "q", "A", "B", a, {s + 10: v for s, v in b.items()}, +1, "points").to_dict()
    assert not other_seeds["paired"]
    assert other_seeds["p"] == pytest.approx(
        scipy_stats.ttest_ind([100 * v for v in a.values()], [100 * v for v in b.values()], equal_var=False).pvalue
    )


def claim(name, key, difference_p, expect=+1, sign=+1):
    """A claim whose test `key` has the two-sided p-value `difference_p` and a difference of `sign`."""
    return {
        "claim": name,
        "quote": "",
        "tests": [{"key": key, "p": difference_p, "difference": sign * 1.0, "expect": expect}],
    }


def test_the_primary_test_decides_after_holm_and_a_secondary_test_never_does():
    found = decide(
        [
            {
                "claim": "dropout",
                "quote": "",
                "tests": [
                    {"key": "gap", "p": 0.30, "difference": -0.4, "expect": -1},  # the primary: not significant
                    {"key": "other", "p": 1e-9, "difference": -5.0, "expect": -1},  # a secondary: very significant
                ],
            },
            claim("spatial", PRIMARY["spatial"], 0.001),
            claim(
                "parameters", PRIMARY["parameters"], 0.03
            ),  # 0.03 alone rejects; times 2 (Holm, 2nd of 3) it does not
        ]
    )
    verdict = {c["claim"]: c["verdict"] for c in found}
    assert verdict == {"dropout": NOT_SETTLED, "spatial": SUPPORTED, "parameters": NOT_SETTLED}
    dropout = found[0]["tests"]
    assert dropout[0]["primary"] and dropout[0]["holm_p"] == pytest.approx(0.30)
    assert not dropout[1]["primary"] and "verdict" not in dropout[1] and "holm_p" not in dropout[1]
    assert found[1]["tests"][0]["holm_p"] == pytest.approx(0.003)
    assert found[2]["tests"][0]["holm_p"] == pytest.approx(0.06)
    # against the claim's direction: contradicted
    against = decide([claim("spatial", PRIMARY["spatial"], 0.001, expect=+1, sign=-1)])
    assert against[0]["verdict"] == CONTRADICTED
    # without its primary test a claim is not settled, whatever its other tests say
    assert decide([claim("dropout", "other", 1e-9)])[0]["verdict"] == NOT_SETTLED


def test_the_limited_claim_is_decided_at_equal_steps_and_older_studies_keep_their_primary():
    both = {
        "claim": "limited",
        "quote": "",
        "tests": [
            {"key": "gain-smallest-vs-full", "p": 1e-6, "difference": 5.0, "expect": +1},  # steps differ: 504 vs 8,600
            {"key": "gain-smallest-vs-largest", "p": 0.4, "difference": 0.5, "expect": +1},  # the same steps
        ],
    }
    decided = decide([both])[0]
    assert decided["verdict"] == NOT_SETTLED and [t["primary"] for t in decided["tests"]] == [False, True]
    # a study from before the equal-steps test (the committed reports) is decided as it was
    older = decide([{**both, "tests": both["tests"][:1]}])[0]
    assert older["verdict"] == SUPPORTED and older["tests"][0]["primary"]


def run(variant, seed, test_acc, val_acc=0.9, train_acc=0.95, **more):
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": f"runs/{variant}-s{seed}",
        **more,
        "metrics": [
            {"epoch": 1, "test_acc": test_acc, "val_acc": val_acc, "train_acc": train_acc, "epoch_seconds": 1.0}
        ],
    }


def test_the_spatial_verdict_follows_the_permuted_numbers():
    """LeNet-5 losing more than the MLPs when the pixels are permuted supports the claim; the opposite contradicts
    it."""
    labels = {"lenet5": "LeNet-5", "mlp": "MLP", "mlp-small": "small MLP"}

    def verdict(lenet_permuted, mlp_permuted):
        main = {
            "lenet5": [run("lenet5", s, 0.99 + s * 1e-4) for s in range(3)],
            "mlp": [run("mlp", s, 0.98 + s * 1e-4) for s in range(3)],
            "mlp-small": [run("mlp-small", s, 0.97 + s * 1e-4) for s in range(3)],
        }
        permuted = [run("p", s, lenet_permuted + s * 2e-4 + s * s * 3e-4, base="lenet5") for s in range(3)]
        permuted += [run("p", s, mlp_permuted + s * 2e-4, base="mlp") for s in range(3)]
        permuted += [run("p", s, 0.97 - s * 1e-4, base="mlp-small") for s in range(3)]
        found = decide(
            [
                {**c, "tests": [t.to_dict() for t in c["tests"]]}
                for c in claims.verdicts(main, labels, {"permuted": {"runs": permuted}})
            ]
        )
        spatial = next(c for c in found if c["claim"] == "spatial")
        return spatial["tests"][0]["verdict"], spatial["verdict"]

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

    # image by image: each seed's McNemar test, from the classes the runs kept, agrees with their recorded accuracy
    test_acc = {(r["variant"], r["seed"]): r["metrics"][-1]["test_acc"] for r in results["runs"]}
    for name, (a, b) in {
        "parameters/test-mlp": ("lenet5", "mlp"),
        "augment/test-lenet5": ("lenet5-augment", "lenet5"),
    }.items():
        for seed, m in c["image_level"][name]["mcnemar"].items():
            assert m["difference"] == pytest.approx(test_acc[a, int(seed)] - test_acc[b, int(seed)], abs=1e-9)
    assert "limited/smallest" in c["image_level"]
    assert "Image by image (secondary, never deciding)" in (out / "REPORT.md").read_text()

    # limited data: each size below the full split, for the three arms, all for the same steps; each
    # regularizer alone at the smallest
    lim = c["limited"]
    assert lim["sizes"] == [*claims.QUICK.subset_sizes, 400]
    for r in lim["runs"]:
        saved = json.loads((out / r["run_dir"] / "config.json").read_text())
        size = saved["train_size"]
        assert saved["passes"] == subset_passes(size, claims.QUICK.subset_steps, 64)
        assert saved["passes"] * -(-size // 64) == claims.QUICK.subset_steps
    assert {r["base"] for r in lim["runs"]} == {"lenet5", "lenet5-all", "mlp", *claims.ALONE}
    assert set(lim["alone"]) == set(claims.ALONE)
    limited_tests = {t["key"] for v in c["verdicts"] if v["claim"] == "limited" for t in v["tests"]}
    assert {"gain-smallest-vs-largest", *(f"smallest-{a}" for a in claims.ALONE)} <= limited_tests

    # learning rates: both models at every rate; speed from the arms' curves
    assert {(r["base"], r["settings"]["lr"]) for r in c["rates"]["runs"]} == {
        (a, lr) for a in ("lenet5", "lenet5-bn") for lr in claims.RATES
    }
    assert set(c["speed"]["steps"]) == {"lenet5", "lenet5-bn"}
    measured = c["speed"]["measured"]
    assert measured["every"] == claims.QUICK.speed_every and set(measured["runs"]) == {"lenet5", "lenet5-bn"}
    for runs in measured["runs"].values():
        for r in runs:
            assert all(step % claims.QUICK.speed_every == 0 for step in r["steps"][:-1])
            assert r["steps"][-1] <= measured["max_steps"] and len(r["val_acc"]) == len(r["steps"])
    assert c["timing"]["speed"]["runs"] == 2

    # the report: the section, a verdict per claim from its tests, and readable figures
    report = (out / "REPORT.md").read_text()
    section = report.split("## 7. The claims, tested", 1)[1]
    undecided = [
        {**c, "tests": [{k: v for k, v in t.items() if k not in ("primary", "holm_p", "verdict")} for t in c["tests"]]}
        for c in c["verdicts"]
    ]
    assert decide(undecided) == c["verdicts"]
    for found in c["verdicts"]:
        assert found["quote"] in section and sum(t["primary"] for t in found["tests"]) <= 1
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
    assert again["timing"]["speed"]["runs"] == 0 and again["speed"]["measured"] == measured


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
    assert "the 3 seeds of each configuration together, as one stacked model" in stacked_note(results, arms)
    assert "the 3 seeds of lenet5 together" in stacked_note(
        results, ("lenet5", "mlp")
    )  # the MLP does not stack on a CPU
    for machine in ({"stack": False}, {"cluster": "tcp://127.0.0.1:8786"}):
        assert stacked_note({**results, "machine": {**results["machine"], **machine}}, arms) == ""
    assert stacked_note({**results, "seeds": 1}, arms) == ""


# ---------------------------------------------------------------- image by image


def test_the_moved_digits_keep_their_classes_which_give_the_curves_and_are_remade_when_damaged(tmp_path):
    arrays = make_arrays(10, 60)
    runs = []
    for seed in (0, 1):
        save_model(tmp_path / f"runs/m{seed}", "mlp-small", seed=seed)
        runs.append({"run_dir": f"runs/m{seed}", "metrics": [{}]})
    found = claims.run_robustness(tmp_path, runs, arrays, claims.QUICK, log=lambda line: None)
    key = {**claims.robustness_key(60), "epoch": 1}
    for run in runs:
        classes = claims.read_moved_predictions(tmp_path / run["run_dir"], key)
        assert classes["shift"].shape == (len(claims.SHIFTS), 4, 60) and classes["rotation"].shape == (5, 2, 60)
        per_image = claims.per_image_moved(classes, arrays.test_labels)
        curves = found[run["run_dir"]]
        for kind in ("shift", "rotation"):  # the run's numbers are the means over the images of the per-image ones
            drop = curves[kind][0] - np.mean(curves[kind][1:])
            assert per_image[kind]["drop"].mean() == pytest.approx(drop)
            assert per_image[kind]["moved"].mean() == pytest.approx(np.mean(curves[kind][1:]))
        assert claims.read_moved_predictions(tmp_path / run["run_dir"], {**key, "epoch": 2}) is None
    # a damaged file is made again, with the same classes, never a traceback; an intact one is reused
    path = tmp_path / "runs/m0" / claims.MOVED_PREDICTIONS_NAME
    good = path.read_bytes()
    path.write_bytes(good[:100])
    said = []
    assert claims.run_robustness(tmp_path, runs, arrays, claims.QUICK, log=said.append) == found
    assert said == ["shifted and rotated digits: 1 models x 60 test images x 7 shifts and 5 angles"]
    assert claims.read_moved_predictions(tmp_path / "runs/m0", key) is not None
    said.clear()
    claims.run_robustness(tmp_path, runs, arrays, claims.QUICK, log=said.append)
    assert said == []


def fake_study(tmp_path, arrays, arms=("lenet5", "mlp", "lenet5-augment"), seeds=(0, 1, 2)):
    """Runs with kept classes made up on the spot: each arm right on a share of the images of its own."""
    rng = np.random.default_rng(0)
    labels, runs = arrays.test_labels, []
    n = len(labels)
    key = {**claims.robustness_key(n), "epoch": 1}
    for a, arm in enumerate(arms):
        for seed in seeds:
            run_dir = f"runs/{arm}-s{seed}"

            def guess(shape, right=0.9 - 0.1 * a):
                return np.where(rng.random(shape) < right, labels, (labels + 1) % 10).astype(np.uint8)

            test = guess(n)
            write_test_predictions(tmp_path / run_dir, 1, test)
            moved = {"shift": guess((len(claims.SHIFTS), 4, n), 0.6), "rotation": guess((len(claims.ANGLES), 2, n))}
            np.savez(tmp_path / run_dir / claims.MOVED_PREDICTIONS_NAME, key=np.array(json.dumps(key)), **moved)
            row = {"test_acc": float(np.mean(test == labels)), "train_acc": 1.0, "val_acc": 0.9}
            runs.append({"variant": arm, "seed": seed, "run_dir": run_dir, "metrics": [row]})
    return runs


def test_image_level_holds_each_seeds_mcnemar_test_and_the_moved_digits_image_variance(tmp_path):
    arrays = make_arrays(10, 80)
    labels = arrays.test_labels
    runs = fake_study(tmp_path, arrays)
    found = claims.image_level(tmp_path, runs, [], [], arrays, claims.QUICK)
    assert set(found) == {  # no mlp-small, mlp-augment or limited runs: their tests are left out
        "parameters/test-mlp",
        "augment/test-lenet5",
        *(f"{claim}/moved-{kind}" for claim in ("spatial", "augment") for kind in ("shift", "rotation")),
    }
    read = {r["run_dir"]: np.load(tmp_path / r["run_dir"] / "test_predictions.npz")["predicted"] for r in runs}
    for seed in (0, 1, 2):
        a, b = read[f"runs/lenet5-s{seed}"], read[f"runs/mlp-s{seed}"]
        assert found["parameters/test-mlp"]["mcnemar"][str(seed)] == mcnemar(a == labels, b == labels).to_dict()
        recorded = [
            r["metrics"][-1]["test_acc"] for r in runs if r["seed"] == seed and r["variant"] in ("lenet5", "mlp")
        ]
        assert found["parameters/test-mlp"]["mcnemar"][str(seed)]["difference"] == pytest.approx(
            recorded[0] - recorded[1]
        )
    # the moved-digit variance by hand: each image's drop, LeNet-5 minus the MLP, averaged over the seeds
    per_image = []
    for seed in (0, 1, 2):
        drops = []
        for arm in ("lenet5", "mlp"):
            with np.load(tmp_path / f"runs/{arm}-s{seed}" / claims.MOVED_PREDICTIONS_NAME) as f:
                right = f["shift"] == labels
            at = [right[0, 0]] + [right[j].mean(0) for j in range(1, len(claims.SHIFTS))]
            drops.append(at[0] - np.mean(at[1:], axis=0))
        per_image.append(drops[0] - drops[1])
    by_hand = np.var(100 * np.mean(per_image, axis=0), ddof=1) / 80
    assert found["spatial/moved-shift"] == {"image_variance": pytest.approx(by_hand), "images": 80}
    # a run whose classes are damaged is left out: one seed of LeNet-5 + augmentation is not enough for a variance
    (tmp_path / "runs/lenet5-augment-s1" / claims.MOVED_PREDICTIONS_NAME).write_bytes(b"damaged")
    (tmp_path / "runs/lenet5-augment-s2" / claims.MOVED_PREDICTIONS_NAME).unlink()
    assert "augment/moved-shift" not in claims.image_level(tmp_path, runs, [], [], arrays, claims.QUICK)


def test_the_moved_digit_tests_include_the_images_sampling_error_and_the_report_shows_it(tmp_path):
    arrays = make_arrays(10, 80)
    runs = fake_study(tmp_path, arrays)
    image_level = claims.image_level(tmp_path, runs, [], [], arrays, claims.QUICK)
    main = {arm: [r for r in runs if r["variant"] == arm] for arm in ("lenet5", "mlp", "lenet5-augment")}
    curves = {"shift": {}, "rotation": {}}
    for r in runs:
        with np.load(tmp_path / r["run_dir"] / claims.MOVED_PREDICTIONS_NAME) as f:
            found = claims.moved_accuracy({k: f[k] for k in ("shift", "rotation")}, arrays.test_labels)
        for kind in curves:
            curves[kind][r["run_dir"]] = found[kind]
    labels = {"lenet5": "LeNet-5", "mlp": "MLP", "lenet5-augment": "LeNet-5 + augmentation"}
    plain = claims.verdicts(main, labels, {"robustness": {"per_run": curves}})
    wider = claims.verdicts(main, labels, {"robustness": {"per_run": curves}, "image_level": image_level})
    test = {c["claim"]: {t.key: t for t in c["tests"]} for c in wider}["spatial"]["moved-shift"]
    old = {c["claim"]: {t.key: t for t in c["tests"]} for c in plain}["spatial"]["moved-shift"]
    assert test.images == 80 and old.images == 0
    d, d_old = test.difference, old.difference
    assert d.difference == pytest.approx(d_old.difference) and d.high - d.low > d_old.high - d_old.low
    by_hand = paired_difference(
        {s: 100 * v for s, v in test.a_values.items()},
        {s: 100 * v for s, v in test.b_values.items()},
        image_level["spatial/moved-shift"]["image_variance"],
    )
    assert d == by_hand
    assert how_compared(test.to_dict()) == "paired by seed, 3 seeds and 80 images"
    assert how_compared(old.to_dict()) == "paired by seed, 3 seeds"  # as an older study renders
    # the McNemar tests: a line per compared pair, every seed's p, in the claim's section; none without them
    decided = claims.decide([{**c, "tests": [t.to_dict() for t in c["tests"]]} for c in wider])
    parameters = next(c for c in decided if c["claim"] == "parameters")
    lines = image_lines(parameters, image_level)
    assert len(lines) == 4 and lines[-1].startswith("- test accuracy, LeNet-5 against MLP: seed 0 ")
    for seed, m in image_level["parameters/test-mlp"]["mcnemar"].items():
        assert f"seed {seed} {100 * m['difference']:+.2f} " in lines[-1]
    assert image_lines(parameters, {}) == []
