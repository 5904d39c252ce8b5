import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_arrays

from mnistlab import fast
from mnistlab.augment import affine_draws
from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import Segment, TrainConfig, config_lr, get_lr
from mnistlab.engine import (
    CHANCE_MIN_STEPS,
    TrainingFailed,
    build,
    evaluate,
    fit,
    train_one_epoch,
    training_failure,
)
from mnistlab.errors import UserError
from mnistlab.inputs import MEAN, STD, batch_inputs, normalize
from mnistlab.models import create_model
from mnistlab.splits import pixel_permutation, split_dataset


def test_normalize_uint8():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[:, 5, 5] = 255
    out = normalize(images)
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.float32
    assert out.min().item() == pytest.approx(-MEAN / STD)
    assert out.max().item() == pytest.approx((1 - MEAN) / STD)


def test_augmented_background_stays_background():
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    out = batch_inputs(images, affine_draws(4, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, normalize(images))


@pytest.mark.parametrize("schedule", ["none", "cosine", "onecycle", "linear"])
def test_lr_schedules(schedule):
    lrs = [get_lr(s, 100, 0.1, schedule) for s in range(100)]
    assert max(lrs) <= 0.1 + 1e-12 and min(lrs) > 0
    if schedule == "none":
        assert set(lrs) == {0.1}
    else:
        assert lrs[-1] < 0.002
    if schedule == "cosine":
        assert lrs[0] == 0.1 and lrs[50] == pytest.approx(0.05)
    if schedule == "onecycle":
        assert lrs[0] == pytest.approx(0.004) and lrs.index(max(lrs)) == 30
    if schedule == "linear":  # the same warm-up over 20%, then a straight line to 0
        assert lrs[0] == pytest.approx(0.004) and lrs.index(max(lrs)) == 20 and lrs[20] == pytest.approx(0.1)
        assert lrs[60] == pytest.approx(0.05) and get_lr(100, 100, 0.1, schedule) == pytest.approx(0)
        steps = [a - b for a, b in zip(lrs[20:], lrs[21:])]
        assert steps == pytest.approx([0.1 / 80] * 79)


@pytest.mark.parametrize("schedule", ["none", "cosine", "onecycle"])
def test_an_extended_schedule_keeps_its_first_segment_and_restarts_from_the_extension_rate(schedule):
    plain = TrainConfig(epochs=3, lr=0.1, schedule=schedule)
    steps = 3 * 7  # 3 epochs of 7 steps
    assert [config_lr(plain, s, steps) for s in range(steps)] == [get_lr(s, steps, 0.1, schedule) for s in range(steps)]

    extended = plain.extended(2, 0.02)
    assert extended.epochs == 5
    assert extended.segments == (
        Segment(3, 0.1, schedule),
        Segment(2, 0.02, "none" if schedule == "none" else "cosine"),
    )
    lrs = [config_lr(extended, s, 5 * 7) for s in range(5 * 7)]
    assert lrs[:steps] == [get_lr(s, steps, 0.1, schedule) for s in range(steps)]  # epochs 1-3 as they were
    assert lrs[steps] == 0.02  # the added epochs start at their own rate
    if schedule != "none":
        assert lrs[-1] < 0.0005 and lrs[steps:] == sorted(lrs[steps:], reverse=True)
    twice = extended.extended(1, 0.001)
    assert [config_lr(twice, s, 6 * 7) for s in range(5 * 7)] == lrs and config_lr(twice, 5 * 7, 6 * 7) == 0.001


def test_a_config_dict_has_segments_only_when_extended():
    plain = TrainConfig(model="mlp", epochs=2)
    assert "segments" not in plain.to_dict()  # compare reuses runs by this dict: it must not change
    extended = plain.extended(3, 0.004)
    d = json.loads(json.dumps(extended.to_dict()))  # as config.json holds it
    assert d["segments"] == [
        {"epochs": 2, "lr": 0.01, "schedule": "cosine"},
        {"epochs": 3, "lr": 0.004, "schedule": "cosine"},
    ]
    assert TrainConfig.from_dict(d) == extended
    for bad in (
        [{"epochs": 2, "lr": 0.01, "schedule": "cosine"}],
        "cosine",
        [{"epochs": 1, "lr": 0.01, "schedule": "cosine"}, {"epochs": 3, "lr": 0.004, "schedule": "cosine"}],
        [{"epochs": 2, "lr": 0.01, "schedule": "cosine"}, {"epochs": 3, "lr": math.inf, "schedule": "cosine"}],
    ):
        with pytest.raises(UserError, match="segment"):
            TrainConfig.from_dict({**d, "segments": bad})


def test_fields_added_since_runs_were_saved_are_in_the_dict_only_when_set():
    # the keys a run's config.json had before nesterov, label smoothing and the training subset
    keys = [
        "model",
        "dataset",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "schedule",
        "augment",
        "dropout",
        "seed",
        "val_size",
        "device",
        "eval_batch_size",
        "amp",
    ]
    # ... and train_eval_size, always: today's runs measure their training metrics on a subset
    assert list(TrainConfig().to_dict()) == [*keys, "train_eval_size"]
    changed = TrainConfig(nesterov=True, label_smoothing=0.1, train_eval_size=0)
    d = json.loads(json.dumps(changed.to_dict()))
    assert (d["nesterov"], d["label_smoothing"], d["train_eval_size"]) == (True, 0.1, 0)
    assert TrainConfig.from_dict(d) == changed and TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_a_run_saved_before_the_training_subset_reads_as_measured_on_its_whole_split(tmp_path):
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "train_eval_size"}
    assert TrainConfig.from_dict(old).train_eval_size == 0
    from mnistlab.study import config_differences

    assert config_differences(old, TrainConfig()) == ["train_eval_size None there, 10000 in this study"]


def test_nesterov_and_label_smoothing_reach_the_optimizer_and_the_loss():
    from mnistlab.engine import build

    assert build(TrainConfig(nesterov=True), torch.device("cpu"))[1].param_groups[0]["nesterov"] is True
    assert build(TrainConfig(), torch.device("cpu"))[1].param_groups[0]["nesterov"] is False
    arrays = make_arrays(64, 1)
    images, labels = torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels).long()
    weights = []
    for smoothing in (0.0, 0.0, 0.3):
        config = TrainConfig(model="mlp-small", batch_size=64, label_smoothing=smoothing, schedule="none")
        model, optimizer = build(config, torch.device("cpu"))
        train_one_epoch(model, optimizer, images, labels, config, torch.Generator().manual_seed(0), 0, 1)
        weights.append(model.net[1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize(
    "settings", [dict(), dict(momentum=0.95, nesterov=True, weight_decay=5e-4, freeze_first_at=0.5)]
)
def test_the_optimizer_steps_as_torch_s_per_parameter_loop_to_the_bit(settings):
    """make_optimizer's SGD is foreach: only the number of calls may differ from the loop, not a weight."""
    from mnistlab.engine import build

    arrays = make_arrays(192, 1)
    images, labels = torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels).long()
    config = TrainConfig(model="lenet5", batch_size=32, schedule="linear", **settings)
    states = []
    for loop in (False, True):
        model, optimizer = build(config, torch.device("cpu"))
        assert optimizer.defaults["foreach"] is True
        if loop:
            optimizer = torch.optim.SGD(model.parameters(), **{**optimizer.defaults, "foreach": False})
        for epoch in range(2):
            train_one_epoch(
                model, optimizer, images, labels, config, torch.Generator().manual_seed(epoch), 6 * epoch, 12
            )
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_the_first_layer_learns_until_freeze_first_at_and_then_takes_no_gradient():
    from mnistlab.engine import build, first_layer_parameters

    arrays = make_arrays(256, 1)
    images, labels = torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels).long()
    config = TrainConfig(model="lenet5", batch_size=32, freeze_first_at=0.5, schedule="none")
    model, optimizer = build(config, torch.device("cpu"))
    first = model.features[0]
    assert list(first_layer_parameters(model)) == [first.weight, first.bias]
    seen = []  # the first block's runs: whether its output needs a gradient, and for how many images
    model.features[2].register_forward_hook(lambda module, args, out: seen.append((out.requires_grad, len(out))))
    snapshots = [[p.detach().clone() for p in (first.weight, model.classifier[0].weight)]]
    for epoch in range(2):  # 8 steps each; the first layer learns in steps 0-7 of 16
        train_one_epoch(model, optimizer, images, labels, config, torch.Generator().manual_seed(epoch), 8 * epoch, 16)
        snapshots.append([p.detach().clone() for p in (first.weight, model.classifier[0].weight)])
    (w0, fc0), (w1, fc1), (w2, fc2) = snapshots
    assert not torch.equal(w0, w1) and torch.equal(w1, w2)  # learned in epoch 1, frozen in epoch 2
    assert not torch.equal(fc0, fc1) and not torch.equal(fc1, fc2)  # the rest learns throughout
    # the plain step runs it on every batch; once frozen, its output needs no gradient, so the
    # backward pass stops before it (fast/frozen.py caches it instead: tests/test_frozen.py)
    assert seen == [(True, 32)] * 8 + [(False, 32)] * 8
    assert first.weight.grad is None  # nor does weight decay or momentum move it: the optimizer skips it


def test_freeze_first_at_is_a_fraction_of_the_steps_left_out_of_the_dict_at_its_default():
    from mnistlab.engine import first_layer_learns, first_layer_parameters

    assert "freeze_first_at" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig(freeze_first_at=0.2).to_dict()).freeze_first_at == 0.2
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="freeze-first-at"):
            TrainConfig(freeze_first_at=bad)
    learns = [first_layer_learns(TrainConfig(freeze_first_at=0.25), step, 8) for step in range(8)]
    assert learns == [True, True, False, False, False, False, False, False]
    assert all(first_layer_learns(TrainConfig(), step, 8) for step in range(8))
    assert not any(first_layer_learns(TrainConfig(freeze_first_at=0.0), step, 8) for step in range(8))
    mlp = create_model("mlp")
    assert list(first_layer_parameters(mlp)) == [mlp.net[1].weight, mlp.net[1].bias]


def test_training_failure_judges_nan_at_once_and_chance_only_after_two_epochs_and_enough_steps():
    def rows(*accs, loss=2.3):
        return [{"train_loss": loss, "train_acc": acc} for acc in accs]

    assert "nan" in training_failure(rows(0.9, loss=math.nan), 10, 10)
    assert "inf" in training_failure(rows(0.9, 0.9, loss=math.inf), 10, 10)
    assert "chance" in training_failure(rows(0.112, 0.112), 1720, 10)  # a rate far too high, on MNIST
    assert training_failure(rows(0.112), 860, 10) is None  # one epoch at chance: not yet "stays"
    assert training_failure(rows(0.10, 0.11), CHANCE_MIN_STEPS - 1, 10) is None  # a short run is never judged
    assert training_failure(rows(0.143, 0.149), 1720, 10) is None  # lr 1e-4 (100x too small) on MNIST: learning
    assert training_failure(rows(0.10, 0.30), 1720, 10) is None
    assert "2 classes" in training_failure(rows(0.5, 0.55), 1720, 2)  # chance is 1/num_classes
    assert training_failure(rows(0.7, 0.75), 1720, 2) is None


def test_evaluate_matches_reference_with_uneven_last_batch():
    torch.manual_seed(0)
    model = create_model("lenet5")
    images = torch.randint(0, 256, (250, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (250,))
    loss, acc = evaluate(model, images, labels, batch_size=100)
    with torch.no_grad():
        logits = model(normalize(images))
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert model.training is False


def test_split_is_seeded_disjoint_and_complete():
    arrays = make_arrays(300, 50)
    a = split_dataset(arrays, 60, 0, torch.device("cpu"))
    b = split_dataset(arrays, 60, 0, torch.device("cpu"))
    c = split_dataset(arrays, 60, 1, torch.device("cpu"))
    assert len(a.val_labels) == 60 and len(a.train_labels) == 240
    assert torch.equal(a.val_images, b.val_images) and not torch.equal(a.val_images, c.val_images)
    together = torch.cat([a.train_images, a.val_images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == len(
        torch.unique(torch.from_numpy(arrays.train_images).flatten(1), dim=0)
    )


def test_the_training_metrics_subset_is_seeded_fixed_and_from_the_training_split():
    from mnistlab.splits import metric_splits

    splits = split_dataset(make_arrays(300, 50), 60, 0, torch.device("cpu"))
    a, b = metric_splits(splits, 100, 0), metric_splits(splits, 100, 0)
    c = metric_splits(splits, 100, 1)
    assert len(a.train_labels) == 100 and torch.equal(a.train_images, b.train_images)
    assert not torch.equal(a.train_images, c.train_images)
    train_rows = {row.tobytes() for row in splits.train_images.flatten(1).numpy()}
    assert all(row.tobytes() in train_rows for row in a.train_images.flatten(1).numpy())
    assert a.val_images is splits.val_images and a.test_images is splits.test_images
    assert metric_splits(splits, 0, 0) is splits and metric_splits(splits, 240, 0) is splits  # all of it


class Spy(torch.nn.Module):
    """A model that records the first pixel of every image of each batch it sees (in `seen`), and learns nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x[:, 0, 0, 0].clone())
        return self.w * torch.zeros(len(x), 10)


def test_one_epoch_visits_every_image_once():
    images = torch.zeros(130, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(130, dtype=torch.uint8)
    model = Spy()
    seen = model.seen
    config = TrainConfig(batch_size=32, val_size=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(
        model, opt, images, torch.zeros(130, dtype=torch.long), config, torch.Generator().manual_seed(0), 0, 5
    )
    values = torch.cat(seen)
    assert [len(s) for s in seen] == [32, 32, 32, 32, 2]
    assert torch.equal(values.sort().values, normalize(images)[:, 0, 0, 0].sort().values)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epochs": 0}, "epochs must be positive"),
        ({"batch_size": -1}, "batch-size must be positive"),
        ({"lr": 0}, "learning rate"),
        ({"lr": -0.1}, "learning rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.5}, "dropout"),
        ({"model": "vgg"}, "unknown model"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr": math.inf}, "lr must be a finite number"),
        ({"weight_decay": math.nan}, "weight-decay must be a finite number"),
        ({"momentum": -math.inf}, "momentum must be a finite number"),
        ({"seed": 10**23}, "seed must be in"),
        ({"seed": -1}, "seed must be in"),
        ({"epochs": "3"}, "epochs must be a whole number"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"lr": "0.1"}, "lr must be a number"),
        ({"augment": 1}, "augment must be true or false"),
        ({"nesterov": True, "optimizer": "adam"}, "nesterov needs the sgd optimizer"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs the sgd optimizer with momentum > 0"),
        ({"label_smoothing": 1.0}, "label smoothing must be in"),
        ({"label_smoothing": -0.1}, "label smoothing must be in"),
        ({"train_eval_size": -1}, "train-eval-size must be >= 0"),
        ({"schedule": "step"}, "schedule must be one of none, cosine, onecycle, linear"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**kwargs)


def test_config_from_a_mangled_file_is_a_user_error():
    with pytest.raises(UserError, match="mapping of settings"):
        TrainConfig.from_dict(["lenet5"])
    with pytest.raises(UserError, match="batch-size must be a whole number"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "batch_size": None})


def test_config_round_trip():
    c = TrainConfig(model="mlp", augment=True, dropout=0.25, seed=3)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert c.model_kwargs == {"dropout": 0.25}
    assert math.isclose(TrainConfig().lr, 0.01)


# ---------------------------------------------------------------- the experiments' settings (claims.py)

CPU = torch.device("cpu")


def test_the_permutation_is_the_same_for_train_validation_and_test():
    arrays = make_arrays(300, 50)
    plain = split_dataset(arrays, 60, 3, CPU)
    permuted = split_dataset(arrays, 60, 3, CPU, permute=7)
    pixels = pixel_permutation(7)
    assert torch.equal(pixels.sort().values, torch.arange(784)) and not torch.equal(pixels, torch.arange(784))
    for (name, images, labels), (_, moved, moved_labels) in zip(plain.items(), permuted.items()):
        assert torch.equal(moved.flatten(1), images.flatten(1)[:, pixels]), name
        assert torch.equal(moved_labels, labels), name
    assert torch.equal(pixel_permutation(7), pixels) and not torch.equal(pixel_permutation(8), pixels)


def test_a_training_subset_is_class_balanced_seeded_and_leaves_validation_alone():
    arrays = make_arrays(1000, 50)
    full = split_dataset(arrays, 200, 0, CPU)
    a = split_dataset(arrays, 200, 0, CPU, train_size=103)
    assert torch.equal(a.val_images, full.val_images) and torch.equal(a.test_images, full.test_images)
    counts = torch.bincount(a.train_labels, minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    rows = {tuple(x) for x in full.train_images.flatten(1).tolist()}
    assert all(tuple(x) in rows for x in a.train_images.flatten(1).tolist())  # drawn from the training split
    assert torch.equal(split_dataset(arrays, 200, 0, CPU, train_size=103).train_images, a.train_images)
    assert not torch.equal(split_dataset(arrays, 200, 1, CPU, train_size=103).train_images, a.train_images)


def test_passes_go_over_every_image_that_many_times():
    images = torch.zeros(50, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(50, dtype=torch.uint8)
    model = Spy()
    seen = model.seen
    steps = train_one_epoch(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        images,
        torch.zeros(50, dtype=torch.long),
        TrainConfig(batch_size=16, passes=3),
        torch.Generator().manual_seed(0),
        0,
        12,
    )
    assert steps == 12 and [len(s) for s in seen] == [16, 16, 16, 2] * 3
    for p in range(3):  # each pass sees every image once
        assert torch.cat(seen[4 * p : 4 * p + 4]).unique().numel() == 50


def test_one_epoch_of_several_passes_trains_exactly_as_that_many_epochs(tmp_path):
    """What the permuted runs rely on: trained as their arms are, evaluated once instead of every epoch."""
    arrays = make_arrays(300, 40)
    common = dict(model="mlp-small", val_size=100, batch_size=32, seed=2, device="cpu", permute=5)
    by_epochs = fit(TrainConfig(epochs=3, **common), arrays, tmp_path / "a", log=lambda line: None)
    by_passes = fit(TrainConfig(epochs=1, passes=3, **common), arrays, tmp_path / "b", log=lambda line: None)
    assert len(by_passes) == 1
    for key in ("train_loss", "val_acc", "test_acc"):
        assert by_passes[0][key] == pytest.approx(by_epochs[-1][key], rel=1e-6), key


def test_a_plain_config_trains_with_the_settings_of_the_committed_study():
    committed = json.loads((Path(__file__).resolve().parents[1] / "reports" / "mnist" / "results.json").read_text())[
        "config"
    ]  # every training setting its runs shared, read from their config.json
    plain = TrainConfig()
    assert {k: getattr(plain, k) for k in committed} == committed
    varied = TrainConfig(permute=0, train_size=500, passes=4)
    assert {"permute": 0, "train_size": 500, "passes": 4}.items() <= varied.to_dict().items()
    assert TrainConfig.from_dict(varied.to_dict()) == varied


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"passes": 0}, "passes must be positive"),
        ({"train_size": -1}, "train-size"),
        ({"permute": -1}, "permute"),
        ({"permute": 1.5}, "permute must be a whole number"),
    ],
)
def test_bad_experiment_settings(kwargs, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**kwargs)


def test_a_subset_larger_than_a_class_allows_is_refused():
    arrays = make_arrays(120, 10)
    with pytest.raises(UserError, match="train-size"):
        split_dataset(arrays, 20, 0, CPU, train_size=101)


def test_a_run_that_stops_carries_its_epochs_and_keeps_them_as_plain_numbers(tmp_path):
    arrays = make_arrays(300, 40)
    with pytest.raises(TrainingFailed, match="loss is nan") as stopped:
        fit(
            TrainConfig(model="lenet5", val_size=100, batch_size=32, lr=3.0, device="cpu"),
            arrays,
            tmp_path,
            log=lambda line: None,
        )
    (row,) = stopped.value.history  # the failed epoch, which is not saved
    assert row["epoch"] == 1 and math.isnan(row["train_loss"])
    (kept,) = stopped.value.metrics()
    assert kept["failed"] == str(stopped.value) and kept["train_loss"] is None and kept["val_acc"] == row["val_acc"]
    json.dumps(kept, allow_nan=False)  # results.json and failed.json hold no NaN
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_speed_wing_switched_off_trains_the_same_model(tmp_path, monkeypatch):
    """MNISTLAB_PLAIN=1 (the README's switch): the plain core alone, the same training to rounding."""
    config = TrainConfig(model="lenet5", epochs=2, batch_size=32, val_size=100, freeze_first_at=0.5, device="cpu")
    synthetic_data, runs = make_arrays(400, 100), {}
    for plain in ("0", "1"):
        monkeypatch.setenv("MNISTLAB_PLAIN", plain)
        model, optimizer = build(config, torch.device("cpu"))
        layers = {type(m).__module__ for m in model.modules()}
        assert ("mnistlab.fast.layers" in layers) == (plain == "0")
        images = torch.from_numpy(synthetic_data.train_images)
        assert (fast.run_steps(model, optimizer, images, images[:, 0, 0].long(), config) is None) == (plain == "1")
        history = fit(config, synthetic_data, tmp_path / plain, log=lambda line: None, show_progress=False)
        runs[plain] = history, load_checkpoint(tmp_path / plain)["model_state"]
    (fast_history, fast_state), (plain_history, plain_state) = runs["0"], runs["1"]
    for key, value in fast_state.items():
        torch.testing.assert_close(value, plain_state[key], rtol=1e-3, atol=1e-4, msg=key)
    for a, b in zip(fast_history, plain_history):
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.011) and a["train_loss"] == pytest.approx(
            b["train_loss"], rel=1e-3
        )
