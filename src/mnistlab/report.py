"""REPORT.md and the study's figures, written from results.json alone (plus the best checkpoint).

Every number in the report comes from `summarize(results)`, which the study also stores in
results.json, so the two cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mnistlab.checkpoint import load_model
from mnistlab.claims import rejudge
from mnistlab.claims_report import answers, claims_section
from mnistlab.config import TrainConfig
from mnistlab.configurations import ABLATION, BASELINE, MATCHED, declared
from mnistlab.evaluate import evaluate_on_test_set, format_confusion
from mnistlab.fileio import write_json, write_text
from mnistlab.models import (
    CONVOLUTIONAL,
    MODELS,
    count_parameters,
    create_model,
    hand_count,
    parameter_table,
)
from mnistlab.plots import plot_confusion, plot_mistakes, plot_study_curves
from mnistlab.stats import Difference, mean_std, paired_difference

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


def seed_values(runs: list[dict], name: str, value) -> dict[int, float]:
    """{seed: value(final metrics)} of a configuration's runs, in percent."""
    return {r["seed"]: 100 * value(r["metrics"][-1]) for r in runs if r["variant"] == name}


def described(d: Difference) -> str:
    """A difference in words: "+0.81 percentage points (95% confidence interval +0.32 to +1.29, paired by seed
    over 3 seeds, p = 0.019)"."""
    if d.low is None:
        return f"{d.difference:+.2f} percentage points (one seed: no confidence interval)"
    how = f"paired by seed over {d.n} seeds" if d.paired else f"Welch's test, {d.n} or more runs a side"
    p = "p < 0.001" if d.p < 0.001 else f"p = {d.p:.3f}"
    return f"{d.difference:+.2f} percentage points (95% confidence interval {d.low:+.2f} to {d.high:+.2f}, {how}, {p})"


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


def analysis(summary: dict, declared: dict[str, dict], runs: list[dict]) -> list[str]:
    """Sentences derived from the numbers; nothing here is fixed text about the outcome. `declared`:
    each configuration's declaration (configurations.declared), which says what is compared with what;
    `runs`: results.json's runs, whose seeds pair the differences. The p-values here are not corrected
    and decide nothing: the claims' verdicts are section 7's."""
    lines = []
    labels = {name: d["label"] for name, d in declared.items()}
    test = lambda m: m["test_acc"]  # noqa: E731
    arch = compared(declared, summary)
    if len(arch) >= 2:
        ranked = sorted(arch, key=lambda v: summary[v]["test_acc"]["mean"], reverse=True)
        top = ranked[0]
        for other in ranked[1:]:
            d = paired_difference(seed_values(runs, top, test), seed_values(runs, other, test))
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
                f"{labels[top]} against {labels[other]} ({size}), test accuracy: {described(d)}; "
                f"{pct(summary[top]['test_acc'])}% against {pct(summary[other]['test_acc'])}%, test error "
                f"{err_top:.2f}% against {err_other:.2f}%."
            )
    for base_name, (_, *regularized) in ablations(declared, summary).items():
        base = summary[base_name]
        lines.append(
            f"Without regularization {labels[base_name]} ends with a train-validation gap of "
            f"{100 * base['gap']['mean']:.2f} percentage points "
            f"(train {pct(base['train_acc'])}%, validation {pct(base['val_acc'])}%)."
        )
        for name in regularized:
            s = summary[name]
            val, tst = (
                paired_difference(
                    seed_values(runs, name, lambda m, k=k: m[k]), seed_values(runs, base_name, lambda m, k=k: m[k])
                )
                for k in ("val_acc", "test_acc")
            )
            gap_change = 100 * (s["gap"]["mean"] - base["gap"]["mean"])
            lines.append(
                f"{labels[name]} against {labels[base_name]}: validation accuracy {described(val)}; test accuracy "
                f"{described(tst)}; the train-validation gap {'shrinks' if gap_change < 0 else 'grows'} by "
                f"{abs(gap_change):.2f} percentage points to {100 * s['gap']['mean']:.2f}."
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


LECUN_EPOCHS = 20  # LeCun et al. 1998 trained LeNet-5 for 20 passes over the training set

# Zalando's benchmark table (github.com/zalandoresearch/fashion-mnist, README, "Benchmark"): submitted
# results, which its authors say they have not tested. Test accuracy on Fashion-MNIST.
ZALANDO = (
    ("MLP 256-128-64, no preprocessing", "mlp", 0.900),
    ("2 conv layers with max pooling (Keras), no preprocessing", "lenet5", 0.876),
    ("2 conv layers, fewer than 100K parameters, no preprocessing", "lenet5", 0.925),
    ("human performance (no fashion expertise, 1,000 test images)", None, 0.835),
)


def zalando_rows(summary: dict, labels: dict[str, str]) -> list[str]:
    """Fashion-MNIST: a few lines of Zalando's published benchmark table beside our nearest configuration."""
    rows = [
        "Zalando's published benchmark table (https://github.com/zalandoresearch/fashion-mnist, README, "
        '"Benchmark") collects submitted results that its authors state they have not verified; a few of its '
        "lines, beside our nearest configuration (not the same model):",
        "",
        "| model in Zalando's table | its test accuracy | our nearest configuration | ours, test accuracy |",
        "|---|---|---|---|",
    ]
    for label, variant, theirs in ZALANDO:
        ours = f"{labels[variant]} | {pct(summary[variant]['test_acc'])}%" if variant in summary else "none | "
        rows.append(f"| {label} | {100 * theirs:.1f}% | {ours} |")
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
    best = best_run(results, CONVOLUTIONAL)
    best_lines = best_figures(results, best, out, arrays) if best else ["No convolutional configuration in this study."]
    write_text(out / "REPORT.md", render(results, out, best_lines))


def primary_tests(claims: dict) -> list[tuple[str, str]]:
    """(claim, its primary test's key) for each verdict in results.json's "claims"."""
    return [(c["claim"], t["key"]) for c in claims.get("verdicts", []) for t in c["tests"] if t["primary"]]


def rerender(out: Path) -> None:
    """A finished study's results.json judged again by today's rules (claims.rejudge) and its REPORT.md
    written again, without training and without the dataset: the best model's section, which needs
    its checkpoint and the test set, is kept from the REPORT.md already there."""
    results = json.loads((out / "results.json").read_text())
    judged = rejudge(results)
    # the verdicts are those of the study itself unless it was judged again before, or today's primary tests differ
    again = results["claims"].get("judged_after_the_runs") or primary_tests(judged) != primary_tests(results["claims"])
    results["claims"] = {**judged, "judged_after_the_runs": True} if again else judged
    lines = (out / "REPORT.md").read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and "matrix and mistakes" in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    best_lines = lines[start + 1 : end]
    while best_lines and best_lines[0] == "":
        best_lines.pop(0)
    while best_lines and best_lines[-1] == "":
        best_lines.pop()
    write_json(out / "results.json", results)
    write_text(out / "REPORT.md", render(results, out, best_lines))


def render(results: dict, out: Path, best_lines: list[str]) -> str:
    """REPORT.md's text, and its figures written into `out`: the answers first, then the evidence,
    the parameter tables last. `best_lines`: the best convolutional model's section."""
    summary = results["summary"]
    declarations = declared(results)
    labels = {k: v["label"] for k, v in declarations.items()}
    names = list(results["variants"])
    n_seeds, epochs = results["seeds"], results["epochs"]
    plot_study_curves(results, out / "training_testing_metrics.png")
    train_eval = results["config"].get("train_eval_size", TrainConfig.train_eval_size)

    L = [f"# mnistlab study on {results['dataset']}", ""]
    L.append(
        f"{plural(len(names), 'configuration')} x {plural(n_seeds, 'seed')} x {plural(epochs, 'epoch')}. "
        f"Finished {results['finished']} on {results['machine']['cpu']} "
        f"({results['machine']['device']}, torch {results['machine']['torch']}). Means ± sample standard "
        "deviations over seeds; accuracies in percent. The study chooses nothing on the test set (every choice "
        "it makes reads validation accuracy); one earlier choice did: the augmentation's nearest-pixel sampling "
        "(reports/augmentation.md)."
    )
    opening = answers(results)
    if opening:
        L += ["", "## The answers", "", *opening]
    L += ["", *settings_lines(results, labels)]
    L += [
        "",
        "## 1. Performance (final epoch)",
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
        "## 2. Training and test curves",
        "",
        "![loss and accuracy per epoch](training_testing_metrics.png)",
        "",
        "Lines are the mean over seeds, bands the range between the lowest and highest seed.",
        "",
    ]
    L += ["## 3. Regularization, before and after", ""]
    for base, group in ablations(declarations, summary).items():
        L.append(
            f"| {labels[base]} | train acc | validation acc | test acc | train-validation gap (percentage points) |"
        )
        L.append("|---|---|---|---|---|")
        for n in group:
            s = summary[n]
            L.append(
                f"| {labels[n]} | {pct(s['train_acc'])} | {pct(s['val_acc'])} | {pct(s['test_acc'])} "
                f"| {pct(s['gap'])} |"
            )
        L.append("")
    if not ablations(declarations, summary):
        L += ["No ablation configuration (a baseline with regularizers added) was part of this study.", ""]
    L += ["## 4. Published reference", ""]
    if results["dataset"] == "mnist":
        L += published_rows(summary)
        trained = "as theirs was" if epochs == LECUN_EPOCHS else f"where theirs had {LECUN_EPOCHS}"
        L += [
            "",
            "LeCun et al.'s LeNet-5 takes 32x32 input, connects C3 to S2 sparsely and ends in RBF units; "
            f"ours is the common 28x28 variant with 44,426 parameters, trained for {plural(epochs, 'epoch')}, "
            f"{trained}. Their distortions were affine, like our augmentation. Today's MLP does better than "
            "1998's most likely because of how it is trained: a softmax output with the cross-entropy loss, where "
            "LeCun et al. trained their networks on a squared-error criterion; with cross-entropy, "
            "Simard et al. (2003, "
            '"Best practices for convolutional neural networks applied to visual document analysis") report '
            "1.6% test error for an MLP with one hidden layer of 800 units, and 1.1% with affine distortions.",
        ]
    elif results["dataset"] == "fashion-mnist":
        L += zalando_rows(summary, labels)
    else:
        L.append(f"LeCun et al. 1998 report no results on {results['dataset']}.")
    L += ["", "## 5. The best convolutional model: confusion matrix and mistakes", "", *best_lines]
    L += ["", "## 6. Analysis", ""] + [f"- {line}" for line in analysis(summary, declarations, results["runs"])]
    claims = bool(results.get("claims", {}).get("verdicts"))
    if claims:
        L += ["", "## 7. The claims, tested", "", *claims_section(results, out)]
    L += ["", f"## {8 if claims else 7}. Parameters", ""]
    L += parameter_section(list(dict.fromkeys(results["variants"][n]["model"] for n in names)))
    while L[-1] == "":
        L.pop()
    L += ["", f"Produced by `{results['command']}`; every figure above is in results.json beside this file."]
    return "\n".join(L) + "\n"


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
