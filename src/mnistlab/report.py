"""REPORT.md and the study's figures, written from results.json alone (plus the best checkpoint).

Every number in the report comes from `summarize(results)`, which the study also stores in
results.json, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mnistlab.checkpoint import load_model
from mnistlab.claims_report import claims_section
from mnistlab.config import TrainConfig
from mnistlab.configurations import ABLATION, BASELINE, MATCHED, declared
from mnistlab.evaluate import evaluate_on_test_set, format_confusion
from mnistlab.fileio import write_text
from mnistlab.models import (
    CONVOLUTIONAL,
    MODELS,
    count_parameters,
    create_model,
    hand_count,
    parameter_table,
)
from mnistlab.plots import plot_confusion, plot_mistakes, plot_study_curves
from mnistlab.stats import Comparison, compare_means, mean_std

# LeCun, Bottou, Bengio, Haffner (1998), "Gradient-based learning applied to document
# recognition", Fig. 9: test error rates (%) on MNIST.
PUBLISHED = (
    ("LeNet-5", "lenet5", 0.95),
    ("LeNet-5, distortions / augmentation", "lenet5-augment", 0.80),
    ("MLP 500-150", "mlp", 2.95),
    ("MLP 500-150, distortions / augmentation", "mlp-augment", 2.45),
)
FINAL_KEYS = ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")


def summarize(results: dict) -> dict:
    """Per variant: final-epoch metrics, test accuracy at the best-validation epoch, train-val gap."""
    summary = {}
    for name in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == name]
        finals = [r["metrics"][-1] for r in runs]
        best = [max(r["metrics"], key=lambda m: m["val_acc"]) for r in runs]
        summary[name] = {
            **{k: mean_std([f[k] for f in finals]) for k in FINAL_KEYS},
            "gap": mean_std([f["train_acc"] - f["val_acc"] for f in finals]),
            "test_acc_at_best_val": mean_std([b["test_acc"] for b in best]),
            "best_val_epoch": mean_std([b["epoch"] for b in best]),
            "epoch_seconds": mean_std([m["epoch_seconds"] for r in runs for m in r["metrics"]]),
            "parameters": runs[0]["parameters"],
        }
    return summary


def pct(s: dict, digits: int = 2) -> str:
    """A fraction's mean ± std as percent; the std is left out for a single seed."""
    text = f"{100 * s['mean']:.{digits}f}"
    return f"{text} ± {100 * s['std']:.{digits}f}" if s["n"] > 1 else text


def num(s: dict, digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def verdict(change: Comparison) -> str:
    """What a regularizer does to validation accuracy, decided from the comparison's numbers."""
    if change.spread is None:
        return "has an effect that one seed cannot settle"
    if not change.exceeds:
        return "makes no difference beyond the seed-to-seed spread"
    return "helps" if change.difference > 0 else "hurts"


def compared(declared: dict[str, dict], summary: dict) -> list[str]:
    """The configurations compared with each other: the baselines and the size-matched models."""
    return [n for n, d in declared.items() if d["role"] in (BASELINE, MATCHED) and n in summary]


def ablations(declared: dict[str, dict], summary: dict) -> dict[str, list[str]]:
    """Each baseline that has ablation configurations in the study -> the baseline, then those."""
    found: dict[str, list[str]] = {}
    for name, d in declared.items():
        if d["role"] == ABLATION and name in summary and d["base"] in summary:
            found.setdefault(d["base"], [d["base"]]).append(name)
    return found


def analysis(summary: dict, declared: dict[str, dict]) -> list[str]:
    """Sentences derived from the numbers; nothing here is fixed text about the outcome. `declared`:
    each configuration's declaration (configurations.declared), which says what is compared with what."""
    lines = []
    labels = {name: d["label"] for name, d in declared.items()}
    arch = compared(declared, summary)
    if len(arch) >= 2:
        ranked = sorted(arch, key=lambda v: summary[v]["test_acc"]["mean"], reverse=True)
        top = ranked[0]
        for other in ranked[1:]:
            test = compare_means(summary[top]["test_acc"], summary[other]["test_acc"])
            ratio = summary[other]["parameters"] / summary[top]["parameters"]
            if 0.95 < ratio < 1.05:
                size = f"about as many parameters as {labels[top]}"
            elif ratio > 1:
                size = f"{ratio:.1f}x as many parameters as {labels[top]}"
            else:
                size = f"{1 / ratio:.1f}x fewer parameters than {labels[top]}"
            err_top, err_other = (
                100 - 100 * summary[top]["test_acc"]["mean"],
                100 - 100 * summary[other]["test_acc"]["mean"],
            )
            lines.append(
                f"{labels[top]} beats {labels[other]} ({size}) by {test.difference:.2f} points of test "
                f"accuracy ({pct(summary[top]['test_acc'])}% against {pct(summary[other]['test_acc'])}%; test error "
                f"{err_top:.2f}% against {err_other:.2f}%); the difference is {test.phrase()}."
            )
    for base_name, (_, *regularized) in ablations(declared, summary).items():
        base = summary[base_name]
        lines.append(
            f"Without regularization {labels[base_name]} ends with a train-validation gap of "
            f"{100 * base['gap']['mean']:.2f} points "
            f"(train {pct(base['train_acc'])}%, validation {pct(base['val_acc'])}%)."
        )
        for name in regularized:
            s = summary[name]
            val, test = compare_means(s["val_acc"], base["val_acc"]), compare_means(s["test_acc"], base["test_acc"])
            gap_change = 100 * (s["gap"]["mean"] - base["gap"]["mean"])
            lines.append(
                f"{labels[name]} {verdict(val)} on validation accuracy ({val.difference:+.2f} points; {val.phrase()}); "
                f"test accuracy {test.difference:+.2f} points ({test.phrase()}); the train-validation gap "
                f"{'shrinks' if gap_change < 0 else 'grows'} by {abs(gap_change):.2f} points to {100 * s['gap']['mean']:.2f}."
            )
    return lines


def published_rows(summary: dict) -> list[str]:
    rows = ["| model | LeCun et al. 1998 test error | ours, test error (final epoch) |", "|---|---|---|"]
    for label, variant, theirs in PUBLISHED:
        ours = "not run" if variant not in summary else f"{100 - 100 * summary[variant]['test_acc']['mean']:.2f}%"
        if variant in summary and summary[variant]["test_acc"]["n"] > 1:
            ours += f" ± {100 * summary[variant]['test_acc']['std']:.2f}"
        rows.append(f"| {label} | {theirs:.2f}% | {ours} |")
    return rows


def parameter_section(models: list[str]) -> list[str]:
    lines, shown = [], {}
    for name in models:
        model = create_model(name)
        table = tuple(parameter_table(model))
        title = f"**{name}** ({MODELS[name].label})"
        if table in shown:  # dropout adds no parameters: say so instead of repeating the table
            lines += [f"{title}: {count_parameters(model):,} parameters, layer for layer those of {shown[table]}.", ""]
            continue
        shown[table] = name
        lines += [
            f"{title}: {count_parameters(model):,} parameters",
            "",
            "| layer | hand calculation | counted from the model | agree |",
            "|---|---|---|---|",
        ]
        for layer, formula, count in table:
            by_hand = hand_count(formula)
            lines.append(f"| {layer} | {formula} = {by_hand:,} | {count:,} | {'yes' if by_hand == count else 'NO'} |")
        lines.append("")
    return lines


def best_run(results: dict, family: str) -> dict | None:
    """The run with the best final validation accuracy among the configurations of the declared `family`."""
    mine = {name for name, d in declared(results).items() if d["family"] == family}
    runs = [r for r in results["runs"] if r["variant"] in mine]
    return max(runs, key=lambda r: r["metrics"][-1]["val_acc"]) if runs else None


# How the report names the settings of a run (TrainConfig's fields), in this order. The switches
# and the settings that are off by default are named only where a run has them.
SETTING_WORDS = {
    "optimizer": "optimizer",
    "lr": "peak lr",
    "momentum": "momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "weight decay",
    "batch_size": "batch size",
    "schedule": "schedule",
    "label_smoothing": "label smoothing",
    "dropout": "dropout",
    "freeze_first_at": "first layer frozen at",
    "amp": "bf16 autocast",
    "val_size": "validation images held out",
    "eval_batch_size": "evaluation batch",
    "train_eval_size": "training images measured each epoch",
    "train_size": "training images",
    "passes": "passes per epoch",
    "permute": "pixels permuted with seed",
}
NAMED_WHERE_SET = {"nesterov", "label_smoothing", "dropout", "freeze_first_at", "amp", "eval_batch_size"}
NAMED_WHERE_SET |= {"train_size", "passes", "permute"}


def settings_text(settings: dict, always: bool = True) -> str:
    """Settings as words, each that differs from TrainConfig's default followed by it: "batch size 128 (default 64)".
    With `always` false, only those that differ."""
    parts = []
    for name, words in SETTING_WORDS.items():
        if name not in settings:
            continue
        value, default = settings[name], getattr(TrainConfig, name)
        if value == default and (name in NAMED_WHERE_SET or not always):
            continue
        differs = "" if value == default else f" (default {setting_value(default)})"
        parts.append(f"{words} {setting_value(value)}{differs}")
    return ", ".join(parts)


def setting_value(value) -> str:
    """A setting's value in the report: "on", "5,000", "0.02", "cosine"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return "the model's own" if value is None else str(value)


def settings_lines(results: dict, labels: dict) -> list[str]:
    """What the runs were trained with (results.json's "config", read from their config.json), and
    where a configuration's runs differ from it."""
    lines = [f"Training settings of every run, read from its config.json: {settings_text(results['config'])}."]
    differing = {name: v.get("settings") for name, v in results["variants"].items() if v.get("settings")}
    if differing:
        lines += ["", "Where configurations differ from these:", ""]
        for name, own in differing.items():
            lines.append(f"- {labels[name]}: {settings_text({**results['config'], **own}, always=False)}")
    return lines


def write_report(results: dict, out: Path, arrays) -> None:
    """REPORT.md, training_testing_metrics.png, confusion and mistakes of the best convolutional model."""
    summary = results["summary"]
    declarations = declared(results)
    labels = {k: v["label"] for k, v in declarations.items()}
    names = list(results["variants"])
    n_seeds, epochs = results["seeds"], results["epochs"]
    plot_study_curves(results, out / "training_testing_metrics.png")
    best = best_run(results, CONVOLUTIONAL)
    best_lines = best_figures(results, best, out, arrays) if best else ["No convolutional configuration in this study."]
    train_eval = results["config"].get("train_eval_size", TrainConfig.train_eval_size)

    L = [f"# mnistlab study on {results['dataset']}", ""]
    L.append(
        f"{plural(len(names), 'configuration')} x {plural(n_seeds, 'seed')} x {plural(epochs, 'epoch')}. "
        f"Finished {results['finished']} on {results['machine']['cpu']} "
        f"({results['machine']['device']}, torch {results['machine']['torch']}). Means ± sample standard "
        "deviations over seeds; accuracies in percent. A difference counts as larger than the "
        "seed-to-seed spread when it exceeds the sum of the two standard deviations. The test set chooses nothing."
    )
    L += ["", *settings_lines(results, labels)]
    L += ["", "## 1. Parameters", ""]
    L += parameter_section(list(dict.fromkeys(results["variants"][n]["model"] for n in names)))
    L += [
        "## 2. Performance (final epoch)",
        "",
        "| model | parameters | train acc | train loss | test acc | test loss | test acc at best-validation epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        s = summary[n]
        L.append(
            f"| {labels[n]} | {s['parameters']:,} | {pct(s['train_acc'])} | {num(s['train_loss'])} | "
            f"{pct(s['test_acc'])} | {num(s['test_loss'])} | {pct(s['test_acc_at_best_val'])} |"
        )
    subset = f"a fixed subset of {train_eval:,} images of" if train_eval else "the whole of"
    L += [
        "",
        f"Train acc and loss are measured on {subset} each run's training split (chosen by its seed, the same "
        "every epoch); validation and test on all of theirs.",
    ]
    L += [
        "",
        "## 3. Training and test curves",
        "",
        "![loss and accuracy per epoch](training_testing_metrics.png)",
        "",
        "Lines are the mean over seeds, bands the range between the lowest and highest seed.",
        "",
    ]
    L += ["## 4. Regularization, before and after", ""]
    for base, group in ablations(declarations, summary).items():
        L.append(f"| {labels[base]} | train acc | validation acc | test acc | train-validation gap (points) |")
        L.append("|---|---|---|---|---|")
        for n in group:
            s = summary[n]
            L.append(
                f"| {labels[n]} | {pct(s['train_acc'])} | {pct(s['val_acc'])} | {pct(s['test_acc'])} | {pct(s['gap'])} |"
            )
        L.append("")
    if not ablations(declarations, summary):
        L += ["No ablation configuration (a baseline with regularizers added) was part of this study.", ""]
    L += ["## 5. Published reference", ""]
    if results["dataset"] == "mnist":
        L += published_rows(summary)
        L += [
            "",
            "LeCun et al.'s LeNet-5 takes 32x32 input, connects C3 to S2 sparsely and ends in RBF units; "
            "ours is the common 28x28 variant with 44,426 parameters, trained for "
            f"{epochs} epochs instead of 20. Their distortions were affine, like our augmentation.",
        ]
    else:
        L.append(f"LeCun et al. 1998 report no results on {results['dataset']}.")
    L += ["", "## 6. The best convolutional model: confusion matrix and mistakes", "", *best_lines]
    L += ["", "## 7. Analysis", ""] + [f"- {line}" for line in analysis(summary, declarations)]
    if results.get("claims", {}).get("verdicts"):
        L += ["", "## 8. The claims, tested", "", *claims_section(results, out)]
    L += ["", f"Produced by `{results['command']}`; every figure above is in results.json beside this file."]
    write_text(out / "REPORT.md", "\n".join(L) + "\n")


def best_figures(results: dict, best: dict, out: Path, arrays) -> list[str]:
    model, _ = load_model(out / best["run_dir"])
    answers = evaluate_on_test_set(model, arrays, torch.device("cpu"), str(out / best["run_dir"]))
    predictions, labels, matrix = answers.predictions.numpy(), answers.labels.numpy(), answers.matrix
    name = f"{declared(results)[best['variant']]['label']} seed {best['seed']}"
    plot_confusion(matrix, out / "confusion_best_lenet5.png", arrays.classes, title=f"{name}: test confusion matrix")
    plot_mistakes(arrays.test_images, labels, predictions, out / "mistakes_best_lenet5.png", arrays.classes)
    wrong = int((predictions != labels).sum())
    return [
        f"Chosen by final validation accuracy among the convolutional configurations: {name} "
        f"(validation {100 * best['metrics'][-1]['val_acc']:.2f}%, "
        f"test {100 * (1 - wrong / len(labels)):.2f}%, {wrong} of {len(labels)} test images wrong).",
        "",
        "![confusion matrix](confusion_best_lenet5.png)",
        "",
        "```",
        format_confusion(matrix, arrays.classes),
        "```",
        "",
        "![misclassified test digits, true→predicted](mistakes_best_lenet5.png)",
        "",
        f"The first {min(wrong, 48)} misclassified test images, titled true→predicted.",
    ]


def plural(n: int, noun: str) -> str:
    """ "1 seed", "3 seeds" """
    return f"{n} {noun}{'' if n == 1 else 's'}"
