"""report.py: comparisons are numbers first; the report's sentences are rendered from them."""

import json
from pathlib import Path

import pytest
from scipy import stats

from mnistlab.configurations import ABLATION, BASELINE, MATCHED
from mnistlab.report import analysis, rerender

REPO = Path(__file__).resolve().parents[1]
COMMITTED = ("mnist", "mnist-e20", "fashion-mnist")


@pytest.mark.parametrize("study", COMMITTED)
def test_each_committed_report_re_renders_from_its_results_json(study, tmp_path):
    """Each committed REPORT.md is what its committed results.json renders to with today's code (the best
    model's section, which needs the checkpoint, is kept), and re-rendering changes nothing in results.json."""
    out = REPO / "reports" / study
    for name in ("results.json", "REPORT.md"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    rerender(tmp_path)
    assert (tmp_path / "REPORT.md").read_text() == (out / "REPORT.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads((out / "results.json").read_text())


CAVEAT = "These runs were made before the primary tests were written down"


def test_a_study_judged_by_other_primary_tests_than_todays_says_so_when_it_re_renders(tmp_path):
    out = REPO / "reports" / "mnist"  # judged by today's primary tests when it ran: no caveat
    results = json.loads((out / "results.json").read_text())
    assert CAVEAT not in (out / "REPORT.md").read_text() and "judged_after_the_runs" not in results["claims"]
    spatial = results["claims"]["verdicts"][0]
    for t in spatial["tests"]:  # as if the study had named another primary test than claims.PRIMARY does
        t["primary"] = t["key"] == "permuted-mlp-small"
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "REPORT.md").write_bytes((out / "REPORT.md").read_bytes())
    rerender(tmp_path)
    assert CAVEAT in (tmp_path / "REPORT.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["claims"]["judged_after_the_runs"] is True


@pytest.mark.parametrize("study", COMMITTED)
def test_the_committed_verdicts_hold_every_number_of_every_test(study):
    results = json.loads((REPO / "reports" / study / "results.json").read_text())
    verdicts = results["claims"]["verdicts"]
    assert len(verdicts) == 6
    for claim in verdicts:
        assert sum(t["primary"] for t in claim["tests"]) == 1
        for t in claim["tests"]:
            assert {"paired", "n", "difference", "low", "high", "p"} <= set(t)
            if t["primary"]:
                assert {"holm_p", "verdict"} <= set(t) and t["verdict"] == claim["verdict"]
    assert not any("seconds" in t["question"] for c in verdicts for t in c["tests"])  # seconds never decide


NOISE = (-0.0005, 0.0, 0.0005)  # each configuration's three seeds: this, in its own order, so that the means stay


def runs_of(arms):
    """Hand-made runs of `arms` (as summary_of takes them), 3 seeds around each mean."""
    return [
        {
            "variant": name,
            "seed": seed,
            "metrics": [
                {
                    "test_acc": test + NOISE[(seed + i) % 3],
                    "val_acc": val + NOISE[(seed + 2 * i) % 3],
                    "train_acc": train,
                }
            ],
        }
        for i, (name, (test, val, train, _)) in enumerate(arms.items())
        for seed in range(3)
    ]


def summary_of(arms):
    """The summary of `runs_of(arms)`."""

    def stat(mean):
        return {"mean": mean, "std": 0.001, "n": 3}

    return {
        name: {
            "test_acc": stat(test),
            "val_acc": stat(val),
            "train_acc": stat(train),
            "gap": stat(train - val),
            "parameters": params,
        }
        for name, (test, val, train, params) in arms.items()
    }


LABELS = {"lenet5": "LeNet-5", "mlp": "MLP", "mlp-small": "small MLP", "lenet5-bn": "BN", "lenet5-dropout": "DO"}
ROLES = {"lenet5": BASELINE, "mlp": BASELINE, "mlp-small": MATCHED}  # the others are ablations of lenet5


def declarations(labels: dict) -> dict:
    """Declarations as configurations.declared gives them, for configurations of these labels."""
    found = {}
    for name, label in labels.items():
        found[name] = {"label": label, "role": ROLES.get(name, ABLATION), "base": None if name in ROLES else "lenet5"}
    return found


def test_analysis_gives_each_difference_paired_by_seed_with_scipys_interval():
    arms = {
        "lenet5": (0.991, 0.989, 0.998, 44_426),
        "mlp": (0.981, 0.979, 0.999, 469_160),
        "lenet5-bn": (0.992, 0.9895, 0.997, 44_448),
    }
    runs = runs_of(arms)
    text = " ".join(analysis(summary_of(arms), declarations(LABELS), runs))
    assert "LeNet-5 against MLP (10.6x as many parameters as LeNet-5), test accuracy: +1.00 percentage points" in text
    by_seed = {(r["variant"], r["seed"]): 100 * r["metrics"][0]["test_acc"] for r in runs}
    expected = stats.ttest_rel([by_seed["lenet5", s] for s in range(3)], [by_seed["mlp", s] for s in range(3)])
    ci = expected.confidence_interval(0.95)
    words = (
        f"95% confidence interval {ci.low:+.2f} to {ci.high:+.2f}, paired by seed over 3 seeds, "
        f"p = {expected.pvalue:.3f}"
    )
    assert f"({words})" in text
    assert "BN against LeNet-5: validation accuracy +0.05 percentage points" in text

    flipped = {
        "lenet5": (0.981, 0.979, 0.99, 44_426),
        "mlp": (0.991, 0.989, 0.999, 469_160),
        "lenet5-bn": (0.970, 0.960, 0.99, 44_448),
    }
    text = " ".join(analysis(summary_of(flipped), declarations(LABELS), runs_of(flipped)))
    assert "MLP against LeNet-5 (10.6x fewer parameters than MLP), test accuracy: +1.00" in text
    assert "BN against LeNet-5: validation accuracy -1.90 percentage points" in text
