"""REPORT.md's section "The claims, tested" and its figures, from results.json's "claims" alone.

Every sentence about an outcome is rendered from a test's numbers (claims.ClaimTest.to_dict and claims.decide); the
fixed text says what was measured and how, never what came out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistlab.claims import run_failed
from mnistlab.config import TrainConfig
from mnistlab.plots import (
    plot_learning_rates,
    plot_limited_data,
    plot_measured_speed,
    plot_robustness,
    plot_speed,
)

TITLES = {
    "spatial": "Spatial structure",
    "parameters": "Fewer parameters",
    "limited": "Regularization with limited data",
    "batch_norm": "Batch normalization and training speed",
    "dropout": "Dropout and overfitting",
    "augment": "Augmentation and generalization",
}


def stat(s: dict, unit: str) -> str:
    """A mean ± std in the unit of a test: fractions as percent, steps whole, seconds to 0.1; "none" of no values."""
    if not s["n"]:
        return "none"
    scale, digits = {"points": (100, 2), "steps": (1, 0), "s": (1, 1)}[unit]
    text = f"{scale * s['mean']:.{digits}f}"
    return f"{text} ± {scale * s['std']:.{digits}f}" if s["n"] > 1 else text


UNIT_WORDS = {"points": "percentage points", "steps": "steps"}


def p_value(p: float | None) -> str:
    if p is None:
        return "unknown"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def difference(t: dict) -> str:
    """A test's difference in its unit, "+0.88 percentage points", or why there is none."""
    if t["difference"] is None:
        return "unknown (no seed has a value for both)"
    digits = 0 if t["unit"] == "steps" else 2
    return f"{t['difference']:+.{digits}f} {UNIT_WORDS[t['unit']]}"


def interval(t: dict) -> str:
    """The 95% confidence interval of a test's difference, "+2.80 to +3.52", or why there is none."""
    if t["low"] is None:
        return "unknown (fewer than two seeds)"
    digits = 0 if t["unit"] == "steps" else 2
    return f"{t['low']:+.{digits}f} to {t['high']:+.{digits}f}"


def how_compared(t: dict) -> str:
    if not t["paired"]:
        return f"Welch, {t['n']} or more runs a side"
    over = f" and {t['images']:,} images" if "images" in t else ""  # image_level: their sampling error included
    return f"paired by seed, {t['n']} seeds{over}"


def image_lines(claim: dict, image_level: dict) -> list[str]:
    """The claim's image-level McNemar tests (claims.image_level), one per seed, shown as secondary figures."""
    found = [(t, image_level[f"{claim['claim']}/{t['key']}"]["mcnemar"]) for t in claim["tests"]
             if "mcnemar" in image_level.get(f"{claim['claim']}/{t['key']}", {})]  # fmt: skip
    if not found:
        return []
    n = next(iter(found[0][1].values()))["n"]
    L = [
        "",
        f"Image by image (secondary, never deciding): the final models of A and B trained with the same seed, "
        f"on the same {n:,} test images; McNemar's exact test on the images where they disagree, and the "
        "difference in accuracy (A - B) with its 95% interval.",
        "",
    ]
    for t, seeds in found:
        per_seed = "; ".join(
            f"seed {seed} {100 * m['difference']:+.2f} points ({100 * m['low']:+.2f} to {100 * m['high']:+.2f}), "
            f"{m['a_only']} against {m['b_only']} images, p {p_value(m['p'])}"
            for seed, m in seeds.items()
        )
        L.append(f"- {t['question']}, {t['a']} against {t['b']}: {per_seed}")
    return L


def test_row(t: dict) -> str:
    """One test as a table row: what, A, B, the claim's expectation, the difference with its interval
    and p-value, and for the primary test its corrected p-value and verdict."""
    suffix = "%" if t["unit"] == "points" else f" {t['unit']}"
    expect = "A > B" if t["expect"] > 0 else "A < B"
    role = "secondary (does not decide)"
    if t["primary"]:
        role = f"**primary**: Holm p {p_value(t['holm_p'])}, {t['verdict']}"
    return (
        f"| {t['question']} | {t['a']}: {stat(t['a_stat'], t['unit'])}{suffix} "
        f"| {t['b']}: {stat(t['b_stat'], t['unit'])}{suffix} "
        f"| {expect} | {difference(t)} | {interval(t)} | {p_value(t['p'])} "
        f"| {how_compared(t)} | {role} |"
    )


def primary_test(claim: dict) -> dict | None:
    return next((t for t in claim["tests"] if t["primary"]), None)


def verdict_sentence(claim: dict) -> str:
    """The verdict and the primary test that decided it."""
    t = primary_test(claim)
    if t is None:
        return f"**Verdict: {claim['verdict']}** (the primary test could not be run in this study)."
    decided = f"decided by the primary test ({t['question']}; Holm-corrected p {p_value(t['holm_p'])})"
    return f"**Verdict: {claim['verdict']}**, {decided}."


RULE = [
    "Each claim has one primary test, written down in the code (claims.PRIMARY): a difference between "
    "two configurations, paired by seed (the seed fixes the validation split, initialization and data order for "
    "every configuration), with its 95% confidence interval and two-sided p-value from a t-test.",
    "The six primary p-values are corrected together with Holm's method: a claim is *supported* when its corrected "
    "p-value is below 0.05 with the difference in the direction the claim predicts, *contradicted* when it is below "
    "0.05 the other way, and *not settled* otherwise; the other tests are shown as evidence and never decide.",
]


def answer(claim: dict) -> str:
    """One sentence: the claim's verdict, its primary test's number and 95% confidence interval."""
    t = primary_test(claim)
    head = f"**{TITLES[claim['claim']]}: {claim['verdict']}.**"
    if t is None:
        return f"{head} No primary test in this study."
    expects = "above" if t["expect"] > 0 else "below"
    return (
        f"{head} {t['question'][0].upper() + t['question'][1:]}, {t['a']} minus {t['b']}: "
        f"{difference(t)} (95% confidence interval {interval(t)}, "
        f"{how_compared(t)}; Holm-corrected p {p_value(t['holm_p'])}); the claim expects it {expects} zero."
    )


def answers(results: dict) -> list[str]:
    """The report's opening: one sentence per claim, then the rule in two sentences."""
    verdicts = results.get("claims", {}).get("verdicts", [])
    if not verdicts:
        return []
    L = [*(f"- {answer(c)}" for c in verdicts), "", " ".join(RULE)]
    if results["claims"].get("judged_after_the_runs"):
        L += [
            "",
            "These runs were made before the primary tests were written down: their verdicts were computed "
            "again from the recorded metrics (claims.rejudge), with the primary tests chosen knowing the runs' "
            "numbers, which makes them weaker evidence than the verdicts of a study run after the choice.",
        ]
    return L


def claims_section(results: dict, out: Path) -> list[str]:
    """The section's lines; its figures are written into `out`."""
    claims = results["claims"]
    labels = {k: v["label"] for k, v in results["variants"].items()}
    L = [
        "Each explanation that the classic write-up of this experiment gives for its results is put to the "
        "experiment that could refute it. A test compares two numbers, A and B (mean ± standard deviation over "
        "seeds), and the claim says which should be larger. " + " ".join(RULE),
        "",
        "| claim | verdict | primary test | tests |",
        "|---|---|---|---|",
    ]
    for claim in claims["verdicts"]:
        t = primary_test(claim)
        primary = f"{t['question']}: {t['a']} against {t['b']}" if t else "none"
        L.append(f"| {claim['quote']} | **{claim['verdict']}** | {primary} | {len(claim['tests'])} |")
    L.append("")
    for number, claim in enumerate(claims["verdicts"], 1):
        L += [f"### 7.{number} {TITLES[claim['claim']]}", "", f"> The write-up: {claim['quote']}.", ""]
        L += EXPERIMENTS[claim["claim"]](results, claims, labels, out)
        while L[-1] == "":
            L.pop()
        L += [
            "",
            "| test | A | B | claim expects | difference (A - B) | 95% confidence interval | p | compared | role |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        L += [test_row(t) for t in claim["tests"]]
        L += image_lines(claim, claims.get("image_level", {}))
        L += ["", verdict_sentence(claim), ""]
    L += timing_lines(claims.get("timing", {}), results["machine"])
    return L


def spatial(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    L = []
    if "permuted" in claims:
        p = claims["permuted"]
        L += [
            f"**Permuted pixels.** One fixed permutation of the 784 pixel positions (seed {p['permutation_seed']}; "
            "the permutation itself is `claims.permuted.permutation` in results.json) reorders every training, "
            "validation and test image. LeNet-5 and the two MLPs are trained on it exactly as their configurations are "
            f"({results['epochs']} passes, the same schedule and seeds), evaluated once at the end. If LeNet-5's lead "
            "comes from spatial structure, it disappears here, while the MLPs, to which pixel order means nothing, "
            "score as before. A published anchor: on MNIST-1D, shuffling the spatial order drops a CNN from 94% to "
            "56% while an MLP stays at 68% (Greydanus 2020).",
            "",
            "| model | test acc, pixels in place | test acc, pixels permuted | lost (percentage points) |",
            "|---|---|---|---|",
        ]
        for arm, v in p["arms"].items():
            L.append(
                f"| {v['label']} | {stat(v['original'], 'points')} | {stat(v['permuted'], 'points')} "
                f"| {stat(v['drop'], 'points')} |"
            )
        L.append("")
    if "robustness" in claims:
        r = claims["robustness"]
        runs = {arm: [x["run_dir"] for x in results["runs"] if x["variant"] == arm] for arm in r["shift"]["accuracy"]}
        plot_robustness(r, runs, labels, out / "shift_rotation.png", r["test_images"])
        L += [
            "**Shifted and rotated digits.** No training: the final model of every configuration on "
            f"{r['test_images']:,} test "
            f"images (drawn with seed {r['seed']}), shifted by whole pixels (the mean over right, left, down and up) "
            "and rotated about the centre (the mean over both ways, bilinear). The loss of a model is its accuracy "
            "at 0 minus its mean over the other shifts (or angles)." + moved_images_note(claims),
            "",
            "![test accuracy against shift and rotation, every configuration](shift_rotation.png)",
            "",
            "| model | "
            + " | ".join(f"{v} px" for v in r["shift"]["values"])
            + " | "
            + " | ".join(f"{v}°" for v in r["rotation"]["values"][1:])
            + " |",
            "|---|" + "---|" * (len(r["shift"]["values"]) + len(r["rotation"]["values"]) - 1),
        ]
        for arm in r["shift"]["accuracy"]:
            cells = [f"{100 * m:.1f}" for m in r["shift"]["accuracy"][arm]["mean"]]
            cells += [f"{100 * m:.1f}" for m in r["rotation"]["accuracy"][arm]["mean"][1:]]
            L.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def moved_images_note(claims: dict) -> str:
    """What the moved-digit tests' intervals include, where claims.image_level measured the images' part."""
    if not any(key.split("/")[1].startswith("moved-") for key in claims.get("image_level", {})):
        return ""
    return (
        " Every seed's models see the same images, so the spread over seeds leaves out which images were drawn: "
        "the moved-digit tests' intervals add that sampling variance (the variance over the images of each image's "
        "difference, divided by their number) to the paired t-test's."
    )


def parameters(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    s = results["summary"]
    sizes = ", ".join(f"{labels[a]} {s[a]['parameters']:,}" for a in ("lenet5", "mlp", "mlp-small") if a in s)
    return [f"The configurations' final test accuracy (section 1). Parameters: {sizes}."]


def limited(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    lim = claims["limited"]
    sizes, full = lim["sizes"], lim["sizes"][-1]
    by_size = {}
    for run in lim["runs"]:
        by_size.setdefault((run["base"], run["settings"]["train_size"]), []).append(run)
    for run in results["runs"]:
        by_size.setdefault((run["variant"], full), []).append(run)
    errors = {
        arm: np.array(
            [
                [100 * (1 - r["metrics"][-1]["test_acc"]) for r in sorted(by_size[(arm, n)], key=lambda r: r["seed"])]
                for n in sizes
            ]
        ).T
        for arm in lim["arms"]
    }
    plot_limited_data(sizes, errors, labels, lim["steps"], out / "limited_data.png")
    what = (
        "LeNet-5, LeNet-5 with all three regularizers and the MLP, trained on class-balanced subsets of the "
        "training split, a different subset for each seed"
    )
    if "min_steps" in lim:  # a study from before every subset had the same steps
        budget = (
            f"; the validation set is the configurations' own, and the full {full:,} are the configurations' own "
            f"runs. The budget rule: a run makes at least {lim['epochs']} passes over its images, as the full split "
            f"does, and more if that gives fewer than {lim['min_steps']:,} optimizer steps, so that a small set is "
            "trained to the end rather than stopped after a few dozen steps."
        )
    else:
        budget = (
            f", every size for the same {lim['subset_steps']:,} optimizer steps (as many passes as that takes), so "
            "that the sizes differ in their images only; the validation set is the configurations' own, and the "
            f"full {full:,} are the configurations' own runs, with their {epochs(lim['epochs'])} "
            f"({lim['steps'][-1]:,} steps)."
        )
    L = [
        f"{what}{budget} Each run is evaluated once, at its end.",
        "",
        "| training images | optimizer steps | "
        + " | ".join(f"{v['label']}, test error (%)" for v in lim["arms"].values())
        + " | accuracy added by all three (percentage points) |",
        "|---|---|" + "---|" * (len(lim["arms"]) + 1),
    ]
    for i, n in enumerate(sizes):
        cells = [
            f"{100 * (1 - v['test_acc'][i]['mean']):.2f}"
            + (f" ± {100 * v['test_acc'][i]['std']:.2f}" if v["test_acc"][i]["n"] > 1 else "")
            for v in lim["arms"].values()
        ]
        L.append(f"| {n:,} | {lim['steps'][i]:,} | " + " | ".join(cells) + f" | {stat(lim['gain'][i], 'points')} |")
    L += ["", "![test error against training-set size, log-log](limited_data.png)"]
    if lim.get("alone"):
        L += [
            "",
            f"Each regularizer alone, on the {sizes[0]:,} images of the smallest subsets, with the same "
            f"{lim['steps'][0]:,} steps:",
            "",
            "| model | test error (%) | accuracy added to LeNet-5 (percentage points) |",
            "|---|---|---|",
        ]
        for v in [*lim["alone"].values(), {**lim["arms"]["lenet5-all"], "gain": lim["gain"][0]}]:
            acc = v["test_acc"] if isinstance(v["test_acc"], dict) else v["test_acc"][0]
            error = {**acc, "mean": 1 - acc["mean"]}
            L.append(f"| {v['label']} | {stat(error, 'points')} | {stat(v['gain'], 'points')} |")
    return L


def batch_norm(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    L = []
    if "speed" in claims and "measured" in claims["speed"]:
        L += measured_speed(results, claims["speed"]["measured"], labels, out)
    elif "speed" in claims:  # a study from before the speed experiment: the arms' curves, a point an epoch
        s = claims["speed"]
        arms = ("lenet5", "lenet5-bn")
        curves = {
            a: np.array([[100 * m["val_acc"] for m in r["metrics"]] for r in results["runs"] if r["variant"] == a])
            for a in arms
        }
        steps = s["steps_per_epoch"] * np.arange(1, curves["lenet5"].shape[1] + 1)
        plot_speed(curves, steps, s["threshold"], labels, out / "batch_norm_speed.png")
        per_step = ", ".join(f"{labels[a]} {1000 * s['seconds_per_step'][a]['mean']:.2f} ms" for a in arms)
        seconds = ", ".join(f"{labels[a]} {stat(s['seconds'][a], 's')} s" for a in arms)
        L += [
            f"**Speed, from the recorded curves.** The configurations' validation accuracy, measured after each "
            f"epoch ({s['steps_per_epoch']:,} steps); the threshold is the lowest final validation accuracy of any run "
            f"of the two configurations minus {100 * s['below_lowest_final']:.0f} percentage point, "
            f"{100 * s['threshold']:.2f}%, which every run reaches. A run's steps are those of the first evaluation at "
            "or above it: only measured points count, so the answer is exact to one epoch and no finer, and a "
            "difference smaller than an epoch cannot be seen. The training seconds to the same evaluation (evaluation "
            f"left out) were {seconds}, measured as the runs trained ({how_trained(results['machine'])}"
            f"{stacked_note(results, arms)}; a step took {per_step}); they move with whatever else the machine runs, "
            "so they are shown and never tested.",
            "",
            "![validation accuracy against steps, LeNet-5 with and without batch norm](batch_norm_speed.png)",
            "",
        ]
    if "rates" in claims:
        r = claims["rates"]
        arms = list(r["arms"])
        runs = {
            a: {
                lr: sorted(
                    (x for x in r["runs"] if x["base"] == a and x["settings"]["lr"] == lr), key=lambda x: x["seed"]
                )
                for lr in r["rates"]
            }
            for a in arms
        }
        accuracy = {
            a: np.array([[100 * x["metrics"][-1]["val_acc"] for x in runs[a][lr]] for lr in r["rates"]]).T for a in arms
        }
        failed = {a: np.array([[run_failed(x, r["chance"]) for x in runs[a][lr]] for lr in r["rates"]]).T for a in arms}
        steps = r["passes"] * -(-r["train_size"] // results["config"]["batch_size"])
        title = f"Learning-rate tolerance: {r['passes']} passes over {r['train_size']:,} images ({steps:,} steps)"
        plot_learning_rates(r["rates"], accuracy, failed, labels, title, out / "learning_rates.png")
        schedule = results["config"].get("schedule", TrainConfig.schedule)
        L += [
            f"**Learning-rate tolerance.** Both models trained on {r['train_size']:,} class-balanced training images "
            f"for {r['passes']} passes ({steps:,} steps, the {schedule} schedule) at each peak rate; the validation "
            "accuracy is that of the last epoch, or of the epoch where the run stopped. A run has *failed* when its "
            f"loss is not finite or its last validation accuracy is within {100 * r['at_chance_within']:.0f} "
            f"percentage points of chance ({100 * r['chance']:.0f}%), however often it was evaluated. The rates are "
            "this test's own, whatever the study's; every other setting is the study's.",
            "",
            "| model | " + " | ".join(f"lr {lr:g}" for lr in r["rates"]) + " |",
            "|---|" + "---|" * len(r["rates"]),
        ]
        for a in arms:
            cells = [
                stat(v, "points") + (f" ({n} of {v['n']} failed)" if n else "")
                for v, n in zip(r["arms"][a]["val_acc"], r["arms"][a]["failed"])
            ]
            L.append(f"| {labels[a]} | " + " | ".join(cells) + " |")
        L += ["", "![validation accuracy against learning rate](learning_rates.png)"]
    return L


def epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def measured_speed(results: dict, m: dict, labels: dict, out: Path) -> list[str]:
    """The speed experiment (bnspeed.py): what it measured, the steps to the threshold, and the seconds per step."""
    arms = ("lenet5", "lenet5-bn")
    plot_measured_speed(
        {a: m["runs"][a] for a in arms}, m["threshold"], m["every"], labels, out / "batch_norm_speed.png"
    )
    steps = ", ".join(f"{labels[a]} {stat(m['steps'][a], 'steps') if m['steps'][a]['n'] else 'none'}" for a in arms)
    missing = [f"{m['not_reached'][a]} of {labels[a]}" for a in arms if m["not_reached"][a]]
    if missing:
        steps += (
            f" ({' and '.join(missing)}'s runs did not reach it within {m['max_steps']:,} steps; the test leaves "
            "their seeds out)"
        )
    per_step = m["seconds_per_step"]
    threads = sorted({r["threads"] for a in arms for r in m["runs"][a]})
    threads_text = " or ".join(str(t) for t in threads) + (" thread" if threads == [1] else " threads")
    return [
        f"**Speed, measured every {m['every']} steps.** For each seed, LeNet-5 and LeNet-5 + batch norm are trained "
        "again as that seed's runs were (their settings, initialization and learning-rate schedule over "
        f"{epochs(results['epochs'])}), and evaluated on the same {m['val_images']:,} images of the seed's validation "
        f"split after every {m['every']} optimizer steps. The threshold is the lowest final validation accuracy of "
        f"any run of the two configurations minus 1 percentage point, {100 * m['threshold']:.2f}%. A run stops at "
        f"its first evaluation at or above it, or after {m['max_steps']:,} steps, and its steps are those of that "
        f"evaluation: only measured points count, exact to {m['every']} steps. Steps to the threshold: {steps}.",
        "",
        f"Seconds per step, each model training on its own, the two in turns of {m['every']} steps in one process "
        f"({threads_text}), medians over the turns, evaluation left out: "
        + ", ".join(f"{labels[a]} {1000 * per_step[a]:.2f} ms" for a in arms)
        + f" (batch norm {per_step['lenet5-bn'] / per_step['lenet5']:.2f}x). This machine's figure, under whatever "
        "else it ran: shown, never tested.",
        "",
        "![validation accuracy against steps, LeNet-5 with and without batch norm](batch_norm_speed.png)",
        "",
    ]


def dropout(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    return [
        "The configurations' final train-validation gap (section 3): overfitting is the part of the training accuracy "
        "that does not carry over to validation."
    ]


def augment(results: dict, claims: dict, labels: dict, out: Path) -> list[str]:
    L = ["The configurations' final test accuracy (section 1), the MLP's with augmentation included"]
    if results["dataset"] == "mnist":
        L[0] += " (LeCun et al. 1998 report 2.45% test error for the 500-150 MLP with distortions; section 4)"
    if "robustness" in claims:
        L[0] += ", and the shifted and rotated digits of section 7.1 (secondary tests)"
    L[0] += ". The augmentation is random rotation ±10°, shift ±2 px and scale 0.9-1.1."
    return L


EXPERIMENTS = {"spatial": spatial, "parameters": parameters, "limited": limited, "batch_norm": batch_norm,
               "dropout": dropout, "augment": augment}  # fmt: skip


def how_trained(machine: dict) -> str:
    """How the study's runs shared the machine, from results.json's "machine", e.g. "2 at a time, 1 thread each"."""
    threads = f"{machine['threads_per_run']} thread{'' if machine['threads_per_run'] == 1 else 's'} each"
    if "cluster" in machine:
        return f"on the Dask workers at {machine['cluster']}, {threads}"
    return f"{machine['jobs']} at a time, {threads}"


# Studies written before results.json recorded how each run trained ("stacked") stacked the seeds
# of these models, on a CPU without a cluster (and of every model on a GPU).
STACKED_BEFORE_THE_RECORD = {"lenet5", "lenet5-bn", "lenet5-dropout", "lenet5-reg"}


def stacked_together(results: dict, arm: str) -> int:
    """How many seeds of `arm` trained together as one stacked model (1: each alone), as results.json records it."""
    runs = results.get("runs", [])
    counts = {run["stacked"] for run in runs if run["variant"] == arm and run.get("stacked")}
    if counts or any("stacked" in run for run in runs):
        return max(counts, default=1)
    machine = results["machine"]  # an older file: what the study of that time did
    stacks = (
        machine.get("stack")
        and "cluster" not in machine
        and (machine["device"] != "cpu" or results["variants"][arm]["model"] in STACKED_BEFORE_THE_RECORD)
    )
    return results["seeds"] if stacks else 1


def stacked_note(results: dict, arms: tuple[str, ...]) -> str:
    """What a recorded second is when the configurations' seeds trained stacked (study.work_units): a step of all
    of them."""
    seeds = results["seeds"]
    stacked = [a for a in arms if stacked_together(results, a) > 1]
    if not stacked:
        return ""
    if len(stacked) == len(arms):
        return (
            f"; the {seeds} seeds of each configuration together, as one stacked model, "
            f"so that a step is one step of all {seeds}"
        )
    return (
        f"; the {seeds} seeds of {', '.join(stacked)} together, as one stacked model (a step of all {seeds}), "
        "the others alone"
    )


def timing_lines(timing: dict, machine: dict) -> list[str]:
    """Where this invocation's time went, part by part (a reused run costs nothing)."""
    if not timing:
        return []
    L = ["### Where the time went", "",
         "This invocation, report and figures not counted. "
         f"Run seconds add up the runs' own times ({how_trained(machine)}); "
         "CPU seconds are the processor time the part took, which moves little with what else the machine runs "
         "(on an otherwise idle machine the wall time is close to the CPU seconds divided by the cores in use). "
         "Runs finished earlier and reused cost nothing.", "",
         "| part | runs | run seconds | CPU seconds | wall seconds |", "|---|---|---|---|---|"]  # fmt: skip

    def row(words: str, part: dict) -> str:
        cells = [
            part.get("runs", ""),
            *(f"{part[k]:.0f}" if k in part else "" for k in ("run_seconds", "cpu_seconds", "wall_seconds")),
        ]
        return f"| {words} | " + " | ".join(str(c) for c in cells) + " |"

    L.append(row("the configurations", timing["arms"]))
    for name, words in (("permuted", "permuted pixels"), ("limited", "limited data"), ("rates", "learning rates")):
        if name in timing:
            L.append(row(f"- {words}", timing[name]))
    if "experiments" in timing:
        L.append(row("the experiments' runs", timing["experiments"]))
    if "speed" in timing:
        L.append(row("batch norm's speed, every few steps (in this process)", timing["speed"]))
    L.append(
        row(
            f"shifted and rotated digits ({timing['robustness']['models']} models)",
            {**timing["robustness"], "runs": ""},
        )
    )
    return L
