import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import use_synthetic_data

import mnistlab.bench.measure
from mnistlab.bench.measure import time_to_target
from mnistlab.bench.render import render
from mnistlab.bench.usual import UsualMNIST, usual_loader
from mnistlab.cli import main
from mnistlab.config import RECIPES, TrainConfig, recipe_config
from mnistlab.errors import UserError
from mnistlab.inputs import normalize

REPO = Path(__file__).resolve().parents[1]
TINY = ["--repeats", "1", "--eval-repeats", "1", "--usual-samples", "64", "--warmup-batches", "1", "--seeds", "2", "--fits", "2",
        "--threads", "1", "--study-epochs", "0"]  # fmt: skip


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    return use_synthetic_data(monkeypatch, 400, 100)


def test_usual_pipeline_gives_exactly_mnistlab_inputs(synthetic_data):
    # The comparison is only fair if both pipelines feed the model the same numbers.
    images, labels = synthetic_data.train_images, synthetic_data.train_labels
    x, y = UsualMNIST(images, labels)[7]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == labels[7]
    assert torch.equal(x, normalize(torch.from_numpy(images[7:8]))[0])
    batch, batch_labels = next(iter(usual_loader(images, labels, 50, shuffle=False)))
    assert torch.equal(batch, normalize(torch.from_numpy(images[:50])))
    assert torch.equal(batch_labels, torch.from_numpy(labels[:50]).long())


def test_usual_loader_shuffles():
    images = np.arange(64, dtype=np.uint8).repeat(28 * 28).reshape(64, 28, 28)
    torch.manual_seed(0)
    _, labels = next(iter(usual_loader(images, np.arange(64, dtype=np.uint8), 64, shuffle=True)))
    assert sorted(labels.tolist()) == list(range(64)) and labels.tolist() != list(range(64))


def test_bench_writes_the_report_and_json(tmp_path, capsys):
    out = tmp_path / "bench" / "RESULTS.md"
    assert main(["bench", *TINY, "--out", str(out)]) == 0
    report = out.read_text()
    for section in (
        "## Training throughput",
        "## Evaluation throughput",
        "## Peak memory",
        "## Time to 99.0% test accuracy",
        "## Targets",
        "extrapolated",
        "torch " + torch.__version__,
    ):
        assert section in report, section
    if not torch.cuda.is_available():
        assert "no GPU was reachable" in report
    result = json.loads(out.with_suffix(".json").read_text())
    assert {(r["model"], r["batch_size"]) for r in result["train"]} == {
        (m, b) for m in ("lenet5", "mlp") for b in (64, 256)
    }
    for row in result["train"]:
        assert row["mnistlab"]["samples_per_second"]["median"] > 0 and row["usual"]["samples_per_second"]["median"] > 0
        pairs = zip(row["mnistlab"]["samples_per_second"]["runs"], row["usual"]["samples_per_second"]["runs"])
        assert row["ratio"]["runs"] == pytest.approx([e / u for e, u in pairs])
    assert [r["model"] for r in result["eval"]] == ["lenet5", "mlp"]
    assert result["memory"]["peak_rss_bytes"] > 50 * 2**20  # a real process with torch loaded
    assert result["memory"]["config"]["model"] == "lenet5" and result["memory"]["config"]["batch_size"] == 64
    tt = result["time_to_target"]
    assert [r["seed"] for r in tt["runs"]] == [0, 1] and [r["seed"] for r in tt["previous_runs"]] == [0, 1]
    assert [len(r["fit_seconds"]) for r in tt["runs"]] == [2, 2] and all(r["same_accuracy"] for r in tt["runs"])
    assert tt["config"]["batch_size"] == RECIPES["fast"]["batch_size"] and tt["previous_config"]["epochs"] == 3
    assert "## `fast` against the previous fast recipe" in report and "study" not in result  # --study-epochs 0
    assert len(result["targets"]) == 6
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cores"] >= 1
    assert f"wrote {out}" in capsys.readouterr().out


def test_time_to_target_counts_training_seconds_up_to_the_first_epoch_at_99(monkeypatch, synthetic_data):
    def fake_fit(config, arrays, out_dir, **kwargs):
        accs = [0.97, 0.991, 0.989, 0.995] if config.seed == 0 else [0.95, 0.96, 0.97, 0.98]
        return [{"epoch_seconds": 2.0 + e, "test_acc": a, "val_acc": a - 0.01} for e, a in enumerate(accs)]

    monkeypatch.setattr(mnistlab.bench.measure, "fit", fake_fit)
    hit, missed = time_to_target(synthetic_data, TrainConfig(epochs=4), seeds=2)
    assert (hit["epoch"], hit["seconds"]) == (2, 2.0 + 3.0)
    assert (missed["epoch"], missed["seconds"]) == (None, None)
    assert hit["val_acc"] == pytest.approx([0.96, 0.981, 0.979, 0.985])


def test_recipes_are_compared_seed_by_seed_alternating(monkeypatch, synthetic_data):
    import mnistlab.bench.measure as measure

    order = []

    def fake_run(arrays, config, seed):
        order.append((config.epochs, seed))
        return {"seed": seed, "epoch_seconds": [1.0] * config.epochs, "val_acc": [0.9], "test_acc": [0.99]}

    monkeypatch.setattr(measure, "recipe_run", fake_run)
    new, old = TrainConfig(epochs=2), TrainConfig(epochs=3)
    result = measure.recipes_compared(synthetic_data, new, old, seeds=3)
    assert order == [(2, 0), (3, 0), (3, 1), (2, 1), (2, 2), (3, 2)]  # which goes first swaps every seed
    assert result["ratio"]["runs"] == [1.5, 1.5, 1.5] and len(result["previous_runs"]) == 3


def test_each_seed_is_its_median_fit_of_several(monkeypatch, synthetic_data):
    import mnistlab.bench.measure as measure

    order, seconds = [], iter([5.0, 9.0, 3.0, 8.0, 4.0, 7.0, 9.0, 6.0, 2.0, 9.0, 7.0, 9.0])

    def fake_run(arrays, config, seed):
        order.append((config.epochs, seed))
        test_acc = 0.991 if seed == 1 and len(order) > 6 else 0.99  # seed 1's later fits come out otherwise
        return {"seed": seed, "epoch_seconds": [next(seconds)], "val_acc": [0.9], "test_acc": [test_acc]}

    monkeypatch.setattr(measure, "recipe_run", fake_run)
    result = measure.recipes_compared(synthetic_data, TrainConfig(epochs=2), TrainConfig(epochs=3), seeds=2, fits=3)
    # pairs in turn: seed 0, seed 1, seed 0, seed 1, ...; which goes first swaps at every pair
    assert order == [(2, 0), (3, 0), (3, 1), (2, 1), (2, 0), (3, 0), (3, 1), (2, 1), (2, 0), (3, 0), (3, 1), (2, 1)]
    assert [r["fit_seconds"] for r in result["runs"]] == [[5.0, 4.0, 2.0], [8.0, 6.0, 9.0]]
    assert [r["fit_seconds"] for r in result["previous_runs"]] == [[9.0, 7.0, 9.0], [3.0, 9.0, 7.0]]
    assert [r["epoch_seconds"] for r in result["runs"]] == [[4.0], [8.0]]  # each seed's median fit
    assert [r["epoch_seconds"] for r in result["previous_runs"]] == [[9.0], [7.0]]
    assert result["ratio"]["runs"] == [9 / 5, 3 / 8, 7 / 4, 9 / 6, 9 / 2, 7 / 9] and result["fits"] == 3
    assert [r["same_accuracy"] for r in result["runs"]] == [True, False]


def test_the_bench_times_a_study_with_and_without_stacked_seeds(monkeypatch, tmp_path):
    from mnistlab.bench.measure import Settings, study_stacking
    from mnistlab.bench.render import study_section
    from mnistlab.configurations import CONFIGURATIONS as VARIANTS

    arrays = use_synthetic_data(monkeypatch, 5400, 100)  # the study holds out 5,000 for validation
    lines = []
    st = study_stacking(
        arrays,
        Settings(study_epochs=1, study_seeds=2),
        torch.device("cpu"),
        lines.append,
        variants=[VARIANTS["lenet5"], VARIANTS["mlp-small"]],
    )
    assert st["stacked_arms"] == ["lenet5"] and st["epochs"] == 1 and st["seeds"] == 2
    for kind in ("separate", "stacked"):
        assert st[kind]["wall_seconds"] > 0 and {arm: len(a) for arm, a in st[kind]["test_acc"].items()} == {
            "lenet5": 2,
            "mlp-small": 2,
        }
    assert st["ratio"] == pytest.approx(st["separate"]["wall_seconds"] / st["stacked"]["wall_seconds"])
    # mlp-small is not stacked: the same runs, the same numbers
    assert st["separate"]["test_acc"]["mlp-small"] == st["stacked"]["test_acc"]["mlp-small"]
    assert st["separate"]["test_acc"]["lenet5"] == pytest.approx(st["stacked"]["test_acc"]["lenet5"], abs=0.02)
    text = "\n".join(study_section(st))
    assert "separate / stacked" in text and "| lenet5 |" in text and len(lines) == 2


def test_recipes():
    fast = recipe_config("fast", seed=3)
    assert fast.seed == 3 and fast.model == "lenet5"
    assert all(getattr(fast, k) == v for k, v in RECIPES["fast"].items())
    assert recipe_config("default") == TrainConfig()
    with pytest.raises(UserError, match="unknown recipe"):
        recipe_config("faster")


@pytest.mark.parametrize(
    "args,match",
    [
        (["--repeats", "0"], "repeats must be positive"),
        (["--seeds", "-1"], "seeds must be positive"),
        (["--study-epochs", "-1"], "study-epochs must be >= 0"),
        (["--study-seeds", "0"], "study-seeds must be positive"),
        (["--threads", "0"], "threads must be positive"),
        (["--out", "results.json"], "Markdown"),
        (["--recipe", "nope"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
        (["--repeats", "two"], "invalid int"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["bench", *args]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err
    assert not (tmp_path / "benchmarks").exists()


def test_the_committed_results_md_is_rendered_from_its_json():
    """RESULTS.md holds nothing that RESULTS.json and the renderer do not: figures live in results files."""
    result = json.loads((REPO / "benchmarks" / "RESULTS.json").read_text())
    gpu = json.loads((REPO / "benchmarks" / "GPU.json").read_text())
    assert render(result, gpu) == (REPO / "benchmarks" / "RESULTS.md").read_text()


def test_the_evidence_the_code_points_at_exists():
    """Measured figures live in results files; every such file the code names must be there."""
    named = {
        m
        for path in (REPO / "src").rglob("*.py")
        for m in re.findall(r"\b(?:benchmarks|reports)/[\w.-]+\.md\b", path.read_text())
    }
    assert {"benchmarks/RESULTS.md", "benchmarks/recipes.md", "reports/augmentation.md"} <= named
    assert all((REPO / name).is_file() for name in named), named
    assert "## fast" in (REPO / "benchmarks" / "recipes.md").read_text()


def test_a_recipe_in_words_says_when_its_first_layer_freezes():
    from mnistlab.bench.render import describe

    assert "first layer frozen after 20% of the steps" in describe(recipe_config("fast").to_dict())
    assert "frozen" not in describe(recipe_config("default").to_dict())


def test_a_corrupt_gpu_json_beside_the_report_fails_before_measuring(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "GPU.json").write_text('{"machine": ')
    assert main(["bench", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPU.json" in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["GPU.json"]


def gpu_figures(stacked_finished: bool) -> dict:
    def runs(arms, seconds):
        return [
            {"arm": arm, "seed": seed, "test_acc": 99.0 + seed / 10, "seconds": seconds}
            for arm in arms
            for seed in range(3)
        ]

    return {
        "machine": {
            "date": "2026-11-27 19:00 UTC",
            "torch": "2.11.0+cu130",
            "python": "3.12.3",
            "device": "cuda",
            "gpu": "NVIDIA H200",
        },
        "epochs": {
            "train": [{"model": "lenet5", "batch_size": 64, "epoch_seconds": [2.0, 1.9, 1.8], "median": 1.9}],
            "evaluate_lenet5_test_seconds": [0.008, 0.009],
            "evaluate_median": 0.0085,
        },
        "fast": {
            "recipe": RECIPES["fast"],
            "runs": [
                {"seed": 0, "seconds": 4.1, "test_acc": [0.985, 0.991], "epoch_seconds": [2.0, 2.1]},
                {"seed": 1, "seconds": None, "test_acc": [0.98, 0.989], "epoch_seconds": [2.0, 2.0]},
            ],
        },
        "study_stacked": {
            "finished": stacked_finished,
            "wall_seconds": 50.0,
            "limit_seconds": 175,
            "finished_runs": runs(["lenet5-all", "lenet5-bn"], 10),
        },
        "study_separate": {
            "finished": False,
            "wall_seconds": 262.0,
            "limit_seconds": 262,
            "finished_runs": runs(["lenet5-all"], 25) + runs(["lenet5-bn"], 20)[:1],
        },
    }


@pytest.mark.parametrize("stacked_finished", [True, False])
def test_the_gpu_section_says_what_gpu_py_measured(stacked_finished):
    from mnistlab.bench.render import gpu_section

    text = "\n".join(gpu_section(gpu_figures(stacked_finished)))
    assert "## On a GPU: NVIDIA H200" in text and "torch 2.11.0+cu130" in text
    assert "| lenet5 | 64 | 1.90 (1.80-2.00) | 2.03 |" in text  # 938 steps of 64
    assert "| 0 | 4.10 | 98.50 99.10 | 2.00 2.10 |" in text and "| 1 | not reached |" in text
    assert "frozen after 20% of the steps" in text  # the recipe in words
    if stacked_finished:
        assert "- stacked: **50 s** for the whole study." in text
    else:
        assert "- stacked: **not finished**; stopped at its limit of 175 s with 6 of the 24 arm runs finished." in text
    assert "- separate: **not finished**; stopped at its limit of 262 s with 4 of the 24 arm runs finished." in text
    # only the arms with every seed finished both ways are compared: lenet5-bn has one separate run
    assert "| lenet5-all | 3 | 75 | 30 | **2.50x** | 99.10 | 99.10 |" in text and "| lenet5-bn |" not in text


def test_the_gpu_section_compares_eager_and_graphed_epochs_and_two_finished_studies():
    from mnistlab.bench.render import gpu_section

    gpu = gpu_figures(True)
    gpu["epochs"]["train_images"] = 55_000
    gpu["epochs"]["train"][0].update(graphs_epoch_seconds=[0.3, 0.2, 0.25], graphs_median=0.25)
    for name, wall, parts in (("separate", 100.0, (60.0, 30.0, 5.0)), ("stacked", 80.0, (40.0, 20.0, 10.0))):
        gpu[f"study_{name}"].update(
            finished=True,
            wall_seconds=wall,
            mean_test_acc={"lenet5": 0.99 if name == "stacked" else 0.9912},
            timing={part: {"wall_seconds": s} for part, s in zip(("arms", "experiments", "robustness"), parts)},
        )
    text = "\n".join(gpu_section(gpu))
    assert "55,000 training images" in text
    assert (
        "| lenet5 | 64 | 1.90 (1.80-2.00) | 2.21 | 0.250 (0.200-0.300) | 0.291 | **7.6x** |" in text
    )  # 860 steps of 64
    assert "- stacked: **80 s** for the whole study (arms 40.0 s, experiments 20.0 s, robustness 10.0 s)." in text
    assert "| arms | 60.0 | 40.0 | 1.50x |" in text and "| the whole study | 100.0 | 80.0 | **1.25x** |" in text
    assert "| lenet5 | 99.12 | 99.00 |" in text
