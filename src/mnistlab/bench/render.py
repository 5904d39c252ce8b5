"""RESULTS.md, written from what RESULTS.json holds alone."""

from __future__ import annotations

import statistics

from mnistlab.config import TrainConfig


def fmt_spread(d: dict, digits: int = 0) -> str:
    return f"{d['median']:,.{digits}f} ({d['min']:,.{digits}f}-{d['max']:,.{digits}f})"


def render(result: dict, gpu: dict | None = None) -> str:
    """RESULTS.md from `result` (RESULTS.json) and, when given, `gpu` (GPU.json, from benchmarks/gpu.py)."""
    m, s = result["machine"], result["settings"]
    n_train, n_test = result["n_train"], result["n_test"]
    engine = "mnistlab" + (" + torch.compile" if s["compile"] else "") + (" + bf16 autocast" if s["amp"] else "")
    gpu_name = f" ({m['gpu']})" if "gpu" in m else ""
    lines = [
        "# mnistlab bench",
        "",
        f"`mnistlab bench` on {m['date']}: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads,",
        (
            f"torch {m['torch']}, Python {m['python']}, device `{m['device']}`{gpu_name}; "
            f"the whole run took {result['bench_seconds']:.0f} s."
        ),
        (
            "Every figure is the median of the repetitions, with the range (min-max) in brackets. "
            "The machine's state drifts:"
        ),
        f"a 512x512 float32 matmul ran at {result['matmul_gflops']['start']:.0f} GFLOP/s at the start and "
        f"{result['matmul_gflops']['end']:.0f} at the end; compare runs only where these agree.",
        "",
    ]
    if m["device"] == "cpu" and gpu is None:
        lines += [
            "GPU figures are absent: no GPU was reachable when this was run. On CUDA the dataset, the batches",
            "and the augmentation stay on the GPU and an epoch makes no host sync (tests/test_cuda_path.py).",
            "",
        ]
    elif m["device"] == "cpu":
        lines += [
            "No GPU was reachable for this run; the GPU's figures, from another run, are in the last section.",
            "",
        ]
    lines += [
        "## Training throughput",
        "",
        (
            f"The same model and optimizer (SGD, lr {TrainConfig.lr:g}, momentum {TrainConfig.momentum:g}) "
            f"over the {n_train:,} training images."
        ),
        f"- **{engine}**: `train_one_epoch` on one uint8 tensor, batches by index from a permutation,",
        f"  channels-last convolutions; {s['repeats']} full epochs timed after {s['warmup_batches']} warm-up batches.",
        (
            "- **usual**: torchvision's recipe by hand (PIL image per sample, ToTensor, Normalize, "
            "`DataLoader(shuffle=True)`,"
        ),
        (
            f"  `num_workers=0`), the model as created; {s['repeats']} x {s['usual_samples']:,} samples "
            f"timed after {s['warmup_batches']} warm-up"
        ),
        (
            "  batches, its seconds per epoch **extrapolated** from that rate "
            "(full epochs of it cost too much to repeat)."
        ),
        (
            "- The two alternate, repetition by repetition; "
            "the ratio is the median of the ratios of each back-to-back pair."
        ),
        "",
        (
            f"| model | batch | {engine} samples/s | usual samples/s | {engine} s/epoch | usual s/epoch "
            f"| {engine} / usual |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["train"]:
        e, u = r["mnistlab"], r["usual"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {fmt_spread(e['samples_per_second'])} "
            f"| {fmt_spread(u['samples_per_second'])} "
            f"| {fmt_spread(e['epoch_seconds'], 2)} | {fmt_spread(u['epoch_seconds'], 2)} "
            f"| **{fmt_spread(r['ratio'], 2)}x** |"
        )
    lines += [
        "",
        "## Evaluation throughput",
        "",
        (
            f"Loss and accuracy over the {n_test:,} test images in eval mode, "
            f"{s['eval_repeats']} passes each, alternating."
        ),
        (
            f"{engine}: `evaluate()` (inference mode, batch {result.get('eval_batch_size', 1000)}, "
            "one read-back at the end);"
        ),
        "usual: the DataLoader above with batch 1000 and no shuffling, `no_grad`, `.item()` per batch.",
        "",
        f"| model | {engine} samples/s | usual samples/s | {engine} / usual |",
        "|---|---:|---:|---:|",
    ]
    for r in result["eval"]:
        lines.append(
            f"| {r['model']} | {fmt_spread(r['mnistlab']['samples_per_second'])} | "
            f"{fmt_spread(r['usual']['samples_per_second'])} | **{fmt_spread(r['ratio'], 2)}x** |"
        )
    mem, c = result["memory"], result["memory"]["config"]
    cuda_peak = (
        f" CUDA peak allocated: {mem['cuda_max_allocated_bytes'] / 2**20:,.0f} MiB."
        if "cuda_max_allocated_bytes" in mem
        else ""
    )
    lines += [
        "",
        "## Peak memory",
        "",
        (
            f"**{mem['peak_rss_bytes'] / 2**20:,.0f} MiB**: the peak resident set size (`getrusage` `ru_maxrss`) "
            "of a fresh Python"
        ),
        (
            "process that loads the arrays and runs `fit()` for 1 epoch of the default LeNet-5 configuration "
            f"(batch {c['batch_size']},"
        ),
        (
            f"{c['val_size']:,} validation images), evaluation of all three splits and the checkpoint included, "
            "and so are the"
        ),
        f"interpreter and the torch libraries.{cuda_peak}",
    ]
    tt = result["time_to_target"]
    c = tt["config"]
    target = f"{100 * tt['target_acc']:.1f}%"
    lines += [
        "",
        f"## Time to {target} test accuracy",
        "",
        f"Recipe `{tt['recipe']}`: {describe(c)}, {c['val_size']:,} validation images held out.",
        (
            f"{fits_in_words(tt)} Time to {target} = the training seconds (`epoch_seconds`, evaluation excluded), "
            "summed up to"
        ),
        f"the end of the first epoch whose test accuracy reaches {target}. The test accuracy is only read here.",
        "",
        (
            "| seed | first epoch at target | seconds to target | val acc by epoch (%) | test acc by epoch (%) "
            "| s/epoch | every fit (s) |"
        ),
        "|---:|---:|---:|---|---|---|---|",
    ]
    for run in tt["runs"]:
        accs = lambda xs: " ".join(f"{100 * x:.2f}" for x in xs)  # noqa: E731
        reached = "not reached" if run["epoch"] is None else str(run["epoch"])
        seconds = "-" if run["seconds"] is None else f"{run['seconds']:.2f}"
        per_epoch = " ".join(f"{x:.2f}" for x in run["epoch_seconds"])
        fits = " / ".join(f"{x:.2f}" for x in run.get("fit_seconds", [sum(run["epoch_seconds"])]))
        lines.append(
            f"| {run['seed']} | {reached} | {seconds} | {accs(run['val_acc'])} | {accs(run['test_acc'])} | {per_epoch} "
            f"| {fits} |"
        )
    if not all(run.get("same_accuracy", True) for run in tt["runs"]):
        lines += ["", "**The fits of a seed did not all give the same accuracies**; the table shows the median fit's."]
    seconds = [run["seconds"] for run in tt["runs"]]
    if None in seconds:
        lines += ["", f"**Not every seed reached {target}**, so there is no mean time to it."]
    else:
        std = statistics.stdev(seconds) if len(seconds) > 1 else 0.0
        lines += [
            "",
            (
                f"Mean over {len(seconds)} seeds: **{statistics.fmean(seconds):.2f} ± {std:.2f} s** "
                "(± one standard deviation)."
            ),
        ]
    if tt["recipe"] != "default":  # the other recipes were chosen by a search, kept with its figures
        lines += ["", f"How `{tt['recipe']}` was chosen, on validation accuracy only: benchmarks/recipes.md."]
    if "previous_runs" in tt:
        lines += recipes_section(tt)
    if "study" in result:
        lines += study_section(result["study"])
    lines += ["", "## Targets", "", "| what | value | target | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['what']} | {target_value(t)} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    if gpu is not None:
        lines += gpu_section(gpu)
    lines += ["", "All the numbers: RESULTS.json beside this file. To regenerate both: `mnistlab bench`.", ""]
    return "\n".join(lines)


def fits_in_words(tt: dict) -> str:
    fits = tt.get("fits", 1)
    if fits == 1:
        return "One `fit()` per seed."
    return (
        f"{fits} `fit()`s per seed, alternating with the previous recipe's (below); each seed's row is its fit with the"
        " median training time, its fits' seconds in the last column."
    )


def median_of(fits: int) -> str:
    return "" if fits == 1 else f", each seed's median fit of {fits}"


def describe(c: dict) -> str:
    """A recipe's settings in words, from its config dict (nesterov, label smoothing and freezing only where set)."""
    momentum = f"{'Nesterov ' if c.get('nesterov') else ''}momentum {c['momentum']:g}"
    smoothing = f", label smoothing {c['label_smoothing']:g}" if c.get("label_smoothing") else ""
    freeze = c.get("freeze_first_at", 1.0)
    frozen = f", the first layer frozen after {100 * freeze:g}% of the steps" if freeze < 1 else ""
    return (
        f"{c['model']}, {c['optimizer']} lr {c['lr']:g} ({momentum} for SGD), weight decay {c['weight_decay']:g}"
        f"{smoothing}, {c['schedule']} schedule, batch {c['batch_size']}, {c['epochs']} epochs{frozen}"
        f"{', augmentation' if c['augment'] else ''}{', bf16 autocast' if c['amp'] else ''}"
    )


def recipes_section(tt: dict) -> list[str]:
    """The recipe against the previous fast recipe, seed by seed, from the same bench run."""
    lines = [
        "",
        f"## `{tt['recipe']}` against the previous fast recipe",
        "",
        (
            f"Previous: {describe(tt['previous_config'])}. Both with each seed, in pairs back to back "
            "(which goes first swaps"
        ),
        "every pair); seconds are whole trainings (`epoch_seconds` summed, evaluation excluded)"
        f"{median_of(tt.get('fits', 1))}, accuracies after the last epoch; the ratio is the median over every pair.",
        "",
        (
            f"| seed | `{tt['recipe']}` s | previous s | previous / `{tt['recipe']}` "
            f"| `{tt['recipe']}` val / test (%) | previous val / test (%) |"
        ),
        "|---:|---:|---:|---:|---|---|",
    ]
    for new, old in zip(tt["runs"], tt["previous_runs"]):
        ratio = sum(old["epoch_seconds"]) / sum(new["epoch_seconds"])
        lines.append(
            f"| {new['seed']} | {sum(new['epoch_seconds']):.2f} | {sum(old['epoch_seconds']):.2f} | {ratio:.2f}x | "
            f"{100 * new['val_acc'][-1]:.2f} / {100 * new['test_acc'][-1]:.2f} | "
            f"{100 * old['val_acc'][-1]:.2f} / {100 * old['test_acc'][-1]:.2f} |"
        )
    mean = lambda runs, key: statistics.fmean(100 * r[key][-1] for r in runs)  # noqa: E731
    lines += [
        "",
        f"Median ratio **{fmt_spread(tt['ratio'], 2)}x**; mean test accuracy {mean(tt['runs'], 'test_acc'):.2f}% "
        f"against {mean(tt['previous_runs'], 'test_acc'):.2f}%.",
    ]
    return lines


def study_section(st: dict) -> list[str]:
    """The short study's wall time with separate runs and with stacked seeds."""
    lines = [
        "",
        f"## A {st['epochs']}-epoch study with and without stacked seeds",
        "",
        (
            f"`mnistlab compare` of every arm, {st['seeds']} seeds x {st['epochs']} epochs, {st['jobs']} job(s), "
            "in a fresh directory:"
        ),
        "first every seed as a separate run (`--no-stack`), then the seeds of the arms that stack",
        f"({', '.join(st['stacked_arms']) or 'none'}) as one stacked model each. One timing of each, not alternated.",
        "",
        "| | wall seconds |",
        "|---|---:|",
        f"| separate runs | {st['separate']['wall_seconds']:.1f} |",
        f"| stacked | {st['stacked']['wall_seconds']:.1f} |",
        f"| separate / stacked | **{st['ratio']:.2f}x** |",
        "",
        "Final test accuracy by arm, mean of the seeds (%), separate / stacked (the same computation in another",
        "order; dropout masks differ):",
        "",
        "| arm | separate | stacked |",
        "|---|---:|---:|",
    ]
    for arm, accs in st["separate"]["test_acc"].items():
        stacked = st["stacked"]["test_acc"][arm]
        lines.append(f"| {arm} | {100 * statistics.fmean(accs):.2f} | {100 * statistics.fmean(stacked):.2f} |")
    return lines


def target_value(target: dict) -> str:
    return "-" if target["value"] is None else f"{target['value']:,.2f}"


def gpu_section(gpu: dict) -> list[str]:
    """benchmarks/gpu.py's figures: a training epoch, the fast recipe's time to 99%, the default study."""
    m, ep = gpu["machine"], gpu["epochs"]
    images = ep.get("train_images", 60_000)  # GPU.json records it since the run with CUDA graphs
    graphs = all("graphs_median" in r for r in ep["train"])
    lines = [
        "",
        f"## On a GPU: {m['gpu']}",
        "",
        (
            f"`benchmarks/gpu.py` on {m['date']}: {m['gpu']}, torch {m['torch']}, Python {m['python']}; "
            "its figures are in GPU.json"
        ),
        f"beside this file, and the studies' output in gpu-logs/. A training epoch over the {images:,} training images",
        "(median of 3), and the time per optimizer step it implies"
        + (
            ": eager steps (after 20 warm-up batches) and steps replayed from CUDA graphs (after a warm-up epoch, which"
            " captures them; mnistlab's default on a GPU, graphs.py), alternating:"
            if graphs
            else ":"
        ),
        "",
    ]
    if graphs:
        lines += [
            "| model | batch | eager s/epoch | ms/step | graphs s/epoch | ms/step | eager / graphs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += ["| model | batch | s/epoch | ms/step |", "|---|---:|---:|---:|"]
    for r in ep["train"]:
        steps = -(-images // r["batch_size"])
        times = r["epoch_seconds"]
        row = (
            f"| {r['model']} | {r['batch_size']} | {r['median']:.2f} ({min(times):.2f}-{max(times):.2f}) "
            f"| {1000 * r['median'] / steps:.2f} |"
        )
        if graphs:
            g = r["graphs_epoch_seconds"]
            row += (
                f" {r['graphs_median']:.3f} ({min(g):.3f}-{max(g):.3f}) | {1000 * r['graphs_median'] / steps:.3f} "
                f"| **{r['median'] / r['graphs_median']:.1f}x** |"
            )
        lines.append(row)
    lines += [
        "",
        f"Evaluation of LeNet-5 on the test set: {1000 * ep['evaluate_median']:.1f} ms a pass (median of "
        f"{len(ep['evaluate_lenet5_test_seconds'])}).",
    ]
    runs = gpu["fast"]["runs"]
    lines += [
        "",
        f"The `fast` recipe ({describe({**TrainConfig().to_dict(), **gpu['fast']['recipe']})}), one `fit()` per seed"
        + (" (its steps replayed from CUDA graphs)" if graphs else "")
        + ": training seconds to 99% test",
        "accuracy, evaluation left out, as in the section on time to 99% above.",
        "",
        "| seed | seconds to 99% | test acc by epoch (%) | s/epoch |",
        "|---:|---:|---|---|",
    ]
    for run in runs:
        seconds = "not reached" if run["seconds"] is None else f"{run['seconds']:.2f}"
        lines.append(
            f"| {run['seed']} | {seconds} | {' '.join(f'{100 * a:.2f}' for a in run['test_acc'])} "
            f"| {' '.join(f'{s:.2f}' for s in run['epoch_seconds'])} |"
        )
    reached = [run["seconds"] for run in runs]
    if None not in reached:
        lines += ["", f"Mean over {len(reached)} seeds: **{statistics.fmean(reached):.2f} s**."]
    lines += [
        "",
        "The whole default study, `mnistlab compare` (8 arms x 3 seeds x 10 epochs, then the experiments on the",
        "claims), in a fresh directory, stacked (the default) and then with `--no-stack`, each within a time limit:",
        "",
    ]
    for name in ("stacked", "separate"):
        st = gpu[f"study_{name}"]
        if st["finished"]:
            parts = st.get("timing") or {}
            split = ", ".join(
                f"{part} {parts[part]['wall_seconds']:.1f} s"
                for part in ("arms", "experiments", "robustness")
                if "wall_seconds" in parts.get(part, {})
            )
            lines.append(
                f"- {name}: **{st['wall_seconds']:.0f} s** for the whole study" + (f" ({split})." if split else ".")
            )
        else:
            planned = st.get("planned_arm_runs") or 24
            lines.append(
                f"- {name}: **not finished**; stopped at its limit of {st['limit_seconds']} s with "
                f"{len(st['finished_runs'])} of the {planned} arm runs finished."
            )
    separate, stacked = gpu["study_separate"], gpu["study_stacked"]
    if separate["finished"] and stacked["finished"]:
        return lines + studies_compared(separate, stacked)
    both = [
        arm
        for arm in dict.fromkeys(r["arm"] for r in gpu["study_stacked"]["finished_runs"])
        if len(arm_runs(gpu, "separate", arm)) == len(arm_runs(gpu, "stacked", arm)) > 0
    ]
    if both:
        lines += [
            "",
            "The arms that both finished, seconds of all their seeds' runs (a stacked run's time is that of its",
            (
                "stacked model, shared evenly among the seeds, as the study's log prints it, in whole seconds) "
                "and mean test accuracy:"
            ),
            "",
            "| arm | seeds | separate s | stacked s | separate / stacked | separate test % | stacked test % |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for arm in both:
            sep, sta = arm_runs(gpu, "separate", arm), arm_runs(gpu, "stacked", arm)
            s_sep, s_sta = sum(r["seconds"] for r in sep), sum(r["seconds"] for r in sta)
            lines.append(
                f"| {arm} | {len(sep)} | {s_sep} | {s_sta} | **{s_sep / s_sta:.2f}x** "
                f"| {statistics.fmean(r['test_acc'] for r in sep):.2f} "
                f"| {statistics.fmean(r['test_acc'] for r in sta):.2f} |"
            )
    return lines


def studies_compared(separate: dict, stacked: dict) -> list[str]:
    """Two finished studies: the wall time of each part, and each arm's mean test accuracy."""
    lines = ["", "| part | separate s | stacked s | separate / stacked |", "|---|---:|---:|---:|"]
    for part in ("arms", "experiments", "robustness"):
        a, b = separate["timing"][part]["wall_seconds"], stacked["timing"][part]["wall_seconds"]
        lines.append(f"| {part} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    a, b = separate["wall_seconds"], stacked["wall_seconds"]
    lines += [
        f"| the whole study | {a:.1f} | {b:.1f} | **{a / b:.2f}x** |",
        "",
        "The robustness part (the moved digits) evaluates the trained models and trains none: stacking does not",
        "act on it.",
        "",
        "Each arm's mean test accuracy over its seeds (%), separate / stacked:",
        "",
        "| arm | separate | stacked |",
        "|---|---:|---:|",
    ]
    for arm, acc in separate["mean_test_acc"].items():
        lines.append(f"| {arm} | {100 * acc:.2f} | {100 * stacked['mean_test_acc'][arm]:.2f} |")
    return lines


def arm_runs(gpu: dict, name: str, arm: str) -> list[dict]:
    return [r for r in gpu[f"study_{name}"]["finished_runs"] if r["arm"] == arm]
