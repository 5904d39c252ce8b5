"""bnspeed.py, batch norm's speed measured every few steps, on synthetic data."""

import json

import pytest
import torch
from synthetic import make_arrays

from mnistlab import claims
from mnistlab.bnspeed import MeasuredRun, image_stream, measure_seed, reached, run_speed, validation_subset
from mnistlab.config import TrainConfig, config_lr
from mnistlab.splits import split_dataset


def test_steps_to_a_threshold_are_those_of_a_measured_point():
    """No straight line between two evaluations, nor from an assumed start at chance: the first
    evaluation at or above the threshold, in its own steps."""
    steps, accuracy = [50, 100, 150, 200], [0.90, 0.96, 0.95, 0.99]
    assert reached(steps, accuracy, 0.93) == 100  # interpolating would give 75
    assert reached(steps, accuracy, 0.50) == 50  # interpolating from chance at step 0 would give fewer
    assert reached(steps, accuracy, 0.96) == 100  # reached exactly
    assert reached(steps, accuracy, 0.955) == 100  # the dip at 150 does not undo it
    assert reached(steps, accuracy, 0.995) is None


def config(model, **more):
    return TrainConfig(model=model, epochs=4, batch_size=16, val_size=100, seed=1, **more)


def test_a_measured_run_takes_its_steps_in_turns_and_is_evaluated_after_each():
    arrays = make_arrays(300, 50)
    c = config("lenet5-bn")
    splits = split_dataset(arrays, c.val_size, c.seed, torch.device("cpu"))
    val_images, val_labels = validation_subset(splits.val_images, splits.val_labels, 60, c.seed)
    run = MeasuredRun(c, splits, val_images, val_labels, max_steps=10)
    for first in (0, 3, 6, 9):
        run.turn(first, min(3, 10 - first))
        assert run.model.training is False  # evaluated last; the next turn trains in training mode again
    assert run.steps == [3, 6, 9, 10] and len(run.val_acc) == len(run.seconds_per_step) == 4
    assert len(run.val_labels) == 60 and all(acc * 60 == pytest.approx(round(acc * 60)) for acc in run.val_acc)
    # the schedule is the study run's, over all its epochs: the last step taken was step 9 of 4 x 13
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(config_lr(c, 9, 4 * 13))
    # batch norm's running statistics moved once per step: 10 training batches, no evaluation among them
    bn = next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 10


def test_the_stream_is_epochs_of_fresh_permutations():
    order = image_stream(10, 7, 4, torch.Generator().manual_seed(0))
    assert len(order) == 28
    assert sorted(order[:10].tolist()) == list(range(10)) and sorted(order[10:20].tolist()) == list(range(10))


def test_a_seed_stops_each_run_where_it_reaches_the_threshold():
    arrays = make_arrays(300, 50)
    configs = {"lenet5": config("lenet5"), "lenet5-bn": config("lenet5-bn")}
    never = measure_seed(configs, arrays, every=4, images=50, threshold=1.01, max_steps=10, device="cpu")
    for arm in configs:
        assert never[arm]["steps"] == [4, 8, 10] and never[arm]["reached"] is None
    at_once = measure_seed(configs, arrays, every=4, images=50, threshold=0.0, max_steps=10, device="cpu")
    for arm in configs:
        assert at_once[arm]["steps"] == [4] and at_once[arm]["reached"] == 4


def test_each_seed_is_kept_and_reused(tmp_path):
    arrays = make_arrays(300, 50)
    configs = {seed: {"lenet5": TrainConfig(model="lenet5", epochs=2, val_size=100, seed=seed)} for seed in (0, 1)}
    first, trained = run_speed(tmp_path, configs, arrays, 3, 40, 1.01, 6, log=lambda line: None)
    assert trained == 2 and [r["seed"] for r in first["runs"]["lenet5"]] == [0, 1]
    assert first["runs"]["lenet5"][0]["steps"] == [3, 6]
    again, trained = run_speed(tmp_path, configs, arrays, 3, 40, 1.01, 6, log=lambda line: None)
    assert trained == 0 and again == first
    # a damaged file is measured again
    path = next((tmp_path / "speed").glob("*-s1.json"))
    path.write_text("{not json")
    _, trained = run_speed(tmp_path, configs, arrays, 3, 40, 1.01, 6, log=lambda line: None)
    assert trained == 1 and json.loads(path.read_text())["arms"]["lenet5"]["steps"] == [3, 6]


def speed_run(seed, reached_at):
    return {"seed": seed, "steps": [50, 100], "val_acc": [0.5, 0.99], "reached": reached_at, "seconds_per_step": [0.01]}


def test_the_batch_norm_verdict_reads_the_measured_steps_paired_by_seed():
    main = {"lenet5": [], "lenet5-bn": []}
    labels = {"lenet5": "LeNet-5", "lenet5-bn": "LeNet-5 + batch norm"}
    measured = {
        "every": 50,
        "val_images": 2000,
        "max_steps": 2550,
        "threshold": 0.977,
        "runs": {
            "lenet5": [speed_run(0, 1400), speed_run(1, 850), speed_run(2, None), speed_run(3, 1200)],
            "lenet5-bn": [speed_run(0, 700), speed_run(1, 650), speed_run(2, 600), speed_run(3, 750)],
        },
    }
    found = claims.verdicts(main, labels, {"speed": {"measured": measured}})
    test = next(
        t for c in found if c["claim"] == "batch_norm" for t in c["tests"] if t.key == claims.PRIMARY["batch_norm"]
    )
    assert test.a_values == {0: 700, 1: 650, 3: 750} and test.b_values == {0: 1400, 1: 850, 3: 1200}
    assert test.to_dict()["paired"] and "every 50 steps" in test.question
    summary = claims.measured_summary(measured)
    assert summary["not_reached"] == {"lenet5": 1, "lenet5-bn": 0} and summary["steps"]["lenet5"]["n"] == 3
