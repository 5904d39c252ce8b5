"""report.py: comparisons are numbers first; the report's sentences are rendered from them."""

import json
from pathlib import Path

import pytest

from mnistlab import report
from mnistlab.configurations import ABLATION, BASELINE, MATCHED, declared
from mnistlab.report import Comparison, analysis, compare_means, verdict

REPO = Path(__file__).resolve().parents[1]


def stat(mean, std=0.001, n=3):
    return {"mean": mean, "std": std, "n": n}


def test_a_comparison_holds_the_difference_the_spread_and_whether_it_exceeds_it():
    larger = compare_means(stat(0.990), stat(0.980, std=0.002))
    assert larger.difference == pytest.approx(1.0) and larger.spread == pytest.approx(0.3) and larger.exceeds
    within = compare_means(stat(0.9801), stat(0.980))
    assert within.difference == pytest.approx(0.01) and within.spread == pytest.approx(0.2) and not within.exceeds
    single = compare_means(stat(0.99, n=1), stat(0.98))
    assert single.difference == pytest.approx(1.0) and single.spread is None and not single.exceeds


@pytest.mark.parametrize(
    "change, expected",
    [
        (Comparison(0.5, 0.2, True), "helps"),
        (Comparison(-0.5, 0.2, True), "hurts"),
        (Comparison(0.1, 0.2, False), "makes no difference beyond the seed-to-seed spread"),
        (Comparison(0.5, None, False), "has an effect that one seed cannot settle"),
    ],
)
def test_verdict(change, expected):
    assert verdict(change) == expected


def test_rewording_the_phrase_does_not_change_a_verdict(monkeypatch):
    base = {
        "val_acc": stat(0.980),
        "test_acc": stat(0.980),
        "train_acc": stat(0.999),
        "gap": stat(0.019),
        "parameters": 1,
    }
    summary = {
        "lenet5": base,
        "lenet5-bn": {**base, "val_acc": stat(0.990), "gap": stat(0.009)},
        "lenet5-dropout": {**base, "val_acc": stat(0.970), "gap": stat(0.029)},
        "lenet5-augment": {**base, "val_acc": stat(0.9805), "gap": stat(0.0185)},
    }
    labels = {"lenet5": "LeNet-5", "lenet5-bn": "BN", "lenet5-dropout": "DO", "lenet5-augment": "AUG"}
    monkeypatch.setattr(Comparison, "phrase", lambda self: "reworded")
    text = " ".join(analysis(summary, declarations(labels)))
    assert "BN helps" in text and "DO hurts" in text and "AUG makes no difference" in text
    assert "reworded" in text and "larger" not in text


def test_the_phrase_follows_the_numbers():
    assert Comparison(1.0, 0.3, True).phrase() == "larger than the seed-to-seed spread of 0.30 points"
    assert Comparison(0.1, 0.3, False).phrase() == "within the seed-to-seed spread of 0.30 points"
    assert "unknown" in Comparison(1.0, None, False).phrase()
    assert report.compare_means(stat(0.99), stat(0.98)).phrase().startswith("larger than")


@pytest.mark.parametrize("study", ["mnist", "mnist-e20"])
def test_the_committed_analysis_renders_from_its_results_json(study):
    """The verdicts of the committed reports, recomputed from their results.json, read word for word the same."""
    out = REPO / "reports" / study
    results = json.loads((out / "results.json").read_text())
    text = (out / "REPORT.md").read_text()
    committed = text.split("## 7. Analysis\n\n", 1)[1].split("\n\nProduced by", 1)[0].split("\n\n## ", 1)[0]
    assert "role" not in results["variants"]["lenet5"]  # written before configurations declared themselves
    assert committed == "\n".join(f"- {line}" for line in analysis(results["summary"], declared(results)))


def summary_of(arms):
    """A hand-made summary: name -> (test, validation, train accuracy, parameters), std 0.1 point, 3 seeds."""

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


def test_analysis_follows_the_numbers():
    lenet_wins = summary_of(
        {
            "lenet5": (0.991, 0.989, 0.998, 44_426),
            "mlp": (0.981, 0.979, 0.999, 469_160),
            "lenet5-bn": (0.992, 0.9895, 0.997, 44_448),
        }
    )
    text = " ".join(analysis(lenet_wins, declarations(LABELS)))
    assert "LeNet-5 beats MLP" in text and "10.6x as many parameters" in text
    assert "by 1.00 points" in text and "larger than the seed-to-seed spread" in text
    assert "BN makes no difference beyond the seed-to-seed spread" in text

    mlp_wins = summary_of(
        {
            "lenet5": (0.981, 0.979, 0.99, 44_426),
            "mlp": (0.991, 0.989, 0.999, 469_160),
            "lenet5-bn": (0.970, 0.960, 0.99, 44_448),
        }
    )
    text = " ".join(analysis(mlp_wins, declarations(LABELS)))
    assert "MLP beats LeNet-5" in text and "BN hurts" in text

    close = summary_of({"lenet5": (0.9900, 0.989, 0.99, 44_426), "mlp": (0.9895, 0.9885, 0.99, 469_160)})
    assert "within the seed-to-seed spread" in " ".join(analysis(close, declarations(LABELS)))
