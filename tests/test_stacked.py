import os
import shutil
import signal

import pytest
import torch
from synthetic import make_arrays

import mnistlab.fast.stacked
import mnistlab.fileio
from mnistlab.checkpoint import load_checkpoint, load_model
from mnistlab.config import TrainConfig
from mnistlab.engine import build, evaluate, fit
from mnistlab.fast import prepare
from mnistlab.fast.stacked import (
    can_stack,
    check_stackable,
    fit_stacked,
    load_stacked,
    stacked_epoch_metrics,
    stacked_model,
    train_stacked_runs,
    unstacked_states,
)
from mnistlab.models import MODELS
from mnistlab.splits import metric_splits, split_dataset

SMALL = {"epochs": 2, "batch_size": 32, "val_size": 100, "lr": 0.05, "train_eval_size": 300}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def arrays():
    return make_arrays(600, 200)


def configs(model="lenet5-bn", seeds=(0, 1, 2), **overrides):
    return [TrainConfig(model=model, seed=s, **{**SMALL, **overrides}) for s in seeds]


def dirs(tmp_path, name, seeds=(0, 1, 2)):
    out = [tmp_path / f"{name}-s{s}" for s in seeds]
    for d in out:
        d.mkdir()
    return out


def quiet(*a, **k):
    return None


def stacked_of(models, name):
    stacked = stacked_model(name, {}, len(models))
    load_stacked(stacked, [m.state_dict() for m in models])
    return prepare(stacked, CPU)


@pytest.mark.parametrize("name", [name for name in MODELS if can_stack(name)])  # not lenet5-1998: test_models_1998.py
def test_the_stacked_model_computes_each_model_on_its_own_images(name):
    models = [build(TrainConfig(model=name, seed=s), CPU)[0] for s in range(3)]
    stacked = stacked_of(models, name)
    # the K models' weights come back out exactly, under the plain model's names
    for state, model in zip(unstacked_states(stacked, 3, models[0].state_dict()), models):
        assert state.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), key
    images = torch.rand(3, 20, 1, 28, 28)  # each model's own batch
    # train mode: batch norm normalizes each model's channels by its own batch's statistics
    train_mode = "dropout" not in name and "reg" not in name
    for m in [*models, stacked]:
        m.train(train_mode)
    logits = stacked(torch.cat(list(images), dim=1))
    assert logits.shape == (3, 20, 10)
    for k, model in enumerate(models):
        torch.testing.assert_close(logits[k], model(images[k]), atol=2e-5, rtol=1e-4)


def test_batch_norm_keeps_running_statistics_per_seed():
    models = [build(TrainConfig(model="lenet5-bn", seed=s), CPU)[0] for s in range(2)]
    stacked = stacked_of(models, "lenet5-bn")
    images = [torch.rand(16, 1, 28, 28), 3 * torch.rand(16, 1, 28, 28)]  # different statistics per model
    stacked.train()
    stacked(torch.cat(images, dim=1))
    for model, x in zip(models, images):
        model.train()
        model(x)
    for state, model in zip(unstacked_states(stacked, 2, models[0].state_dict()), models):
        for key in ("features.1.running_mean", "features.1.running_var", "features.5.running_var"):
            torch.testing.assert_close(state[key], model.state_dict()[key], atol=1e-5, rtol=1e-4)


def test_each_stacked_seed_matches_a_separate_fit_of_that_seed(tmp_path, arrays):
    """Without dropout, the same computation in another order: the weights agree to float rounding, grown over 32
    steps."""
    cfgs = configs("lenet5-bn", seeds=(0, 1))
    histories = fit_stacked(cfgs, arrays, dirs(tmp_path, "stacked", (0, 1)), log=quiet)
    for config, stacked_history, out in zip(cfgs, histories, dirs(tmp_path, "alone", (0, 1))):
        alone = fit(config, arrays, out, log=quiet, show_progress=False)
        for a, b in zip(stacked_history, alone):
            for key in ("train_loss", "val_loss", "test_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
            for key in ("train_acc", "val_acc", "test_acc"):
                assert a[key] == pytest.approx(b[key], abs=0.011), key  # at most a few images of 100-300 flip
        stacked_state = load_checkpoint(tmp_path / f"stacked-s{config.seed}")["model_state"]
        alone_state = load_checkpoint(out)["model_state"]
        for key, value in alone_state.items():
            torch.testing.assert_close(stacked_state[key].float(), value.float(), atol=2e-3, rtol=1e-2, msg=key)


def test_stacked_seeds_honour_the_experiments_settings_as_a_separate_fit_does(tmp_path, arrays):
    """Permuted pixels, a class-balanced subset and several passes per epoch (the claims' runs): the same as alone."""
    cfgs = configs("lenet5", seeds=(0, 1), permute=3, train_size=200, passes=3, epochs=1)
    histories = fit_stacked(cfgs, arrays, dirs(tmp_path, "stacked", (0, 1)), log=quiet)
    for config, (stacked_row,), out in zip(cfgs, histories, dirs(tmp_path, "alone", (0, 1))):
        (alone_row,) = fit(config, arrays, out, log=quiet, show_progress=False)
        for key in ("train_loss", "val_loss", "test_loss"):
            assert stacked_row[key] == pytest.approx(alone_row[key], rel=1e-3, abs=1e-4), key
        assert stacked_row["lr"] == alone_row["lr"]  # the same steps: 3 passes of ceil(200 / 32)
        stacked_state = load_checkpoint(tmp_path / f"stacked-s{config.seed}")["model_state"]
        for key, value in load_checkpoint(out)["model_state"].items():
            torch.testing.assert_close(stacked_state[key], value, atol=2e-3, rtol=1e-2, msg=key)


def test_a_single_stacked_seed_with_dropout_draws_the_masks_of_a_separate_run(tmp_path, arrays):
    """With K=1 the global generator is where `build` left it, as in `fit`: dropout masks agree too."""
    (config,) = configs("lenet5-reg", seeds=(4,), augment=True)
    (stacked,) = fit_stacked([config], arrays, dirs(tmp_path, "stacked", (4,)), log=quiet)
    alone = fit(config, arrays, dirs(tmp_path, "alone", (4,))[0], log=quiet, show_progress=False)
    for a, b in zip(stacked, alone):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)


def test_unstacked_checkpoints_load_as_plain_models_and_predict(tmp_path, arrays):
    cfgs = configs("lenet5-reg", seeds=(0, 1))
    out_dirs = dirs(tmp_path, "run", (0, 1))
    histories = fit_stacked(cfgs, arrays, out_dirs, log=quiet)
    images = torch.from_numpy(arrays.test_images)
    labels = torch.from_numpy(arrays.test_labels).long()
    predictions = []
    for config, out, history in zip(cfgs, out_dirs, histories):
        model, ckpt = load_model(out)
        assert type(model).__name__ == "LeNet5" and ckpt["config"] == config.to_dict()
        assert (out / "metrics.csv").read_text().count("\n") == 3 and (out / "config.json").is_file()
        loss, acc = evaluate(model, images, labels)
        assert acc == pytest.approx(history[-1]["test_acc"]) and loss == pytest.approx(
            history[-1]["test_loss"], rel=1e-5
        )
        assert acc > 0.5  # it learned the synthetic classes
        predictions.append(model(torch.zeros(1, 1, 28, 28)))
    assert not torch.equal(*predictions)  # two seeds, two models


def test_a_stacked_run_is_deterministic(tmp_path, arrays):
    cfgs = configs("lenet5-reg", augment=True)
    a = fit_stacked(cfgs, arrays, dirs(tmp_path, "a"), log=quiet)
    b = fit_stacked(cfgs, arrays, dirs(tmp_path, "b"), log=quiet)
    timing = ("epoch_seconds", "samples_per_second")
    strip = lambda hs: [[{k: v for k, v in row.items() if k not in timing} for row in h] for h in hs]  # noqa: E731
    assert strip(a) == strip(b)
    assert len({h[-1]["val_loss"] for h in a}) == 3  # the seeds differ


def interrupting(after: set[tuple[int, int]]):
    """An on_epoch that raises KeyboardInterrupt once model k has written epoch e, for (e, k) in `after`."""
    epochs = {}

    def on_epoch(k):
        epochs[k] = epochs.get(k, 0) + 1
        if (epochs[k], k) in after:
            raise KeyboardInterrupt

    return on_epoch


def test_an_interrupted_stacked_run_resumes_stacked_to_the_same_weights(tmp_path, arrays):
    cfgs = configs("lenet5-reg", augment=True, epochs=3)
    whole = fit_stacked(cfgs, arrays, dirs(tmp_path, "whole"), log=quiet)
    part = dirs(tmp_path, "part")
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(cfgs, arrays, part, log=quiet, on_epoch=interrupting({(1, 2)}))
    assert [load_checkpoint(d)["epoch"] for d in part] == [1, 1, 1]
    resumed = train_stacked_runs([(c, d, 1) for c, d in zip(cfgs, part)], arrays, log=quiet)
    strip = lambda h: [{k: v for k, v in row.items() if "second" not in k} for row in h]  # noqa: E731
    assert [strip(h) for h in resumed] == [strip(h) for h in whole]
    for seed in (0, 1, 2):
        a, b = load_checkpoint(tmp_path / f"whole-s{seed}"), load_checkpoint(tmp_path / f"part-s{seed}")
        for key, value in a["model_state"].items():
            assert torch.equal(value, b["model_state"][key]), key


def test_ctrl_c_while_the_seeds_files_are_written_waits_until_every_seed_has_its_epoch(tmp_path, arrays, monkeypatch):
    cfgs = configs("lenet5", epochs=3)
    part = dirs(tmp_path, "part")
    real = mnistlab.fileio.atomic_write

    def pressed_in_the_middle(path, *args, **kwargs):  # a real SIGINT, as the terminal sends it, after seed 0's epoch 2
        real(path, *args, **kwargs)
        if path == part[0] / "metrics.csv" and len(path.read_text().splitlines()) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(mnistlab.fileio, "atomic_write", pressed_in_the_middle)
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(cfgs, arrays, part, log=quiet)
    assert [load_checkpoint(d)["epoch"] for d in part] == [2, 2, 2]
    assert [len((d / "metrics.csv").read_text().splitlines()) for d in part] == [3, 3, 3]


def test_seeds_that_stand_an_epoch_apart_resume_in_step_and_finish(tmp_path, arrays):
    """As after a kill while epoch 2's files were written: seed 0 has it, 1 and 2 do not."""
    cfgs = configs("lenet5", epochs=3)
    part = dirs(tmp_path, "part")
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(cfgs, arrays, part, log=quiet, on_epoch=interrupting({(1, 2)}))
    for d in part[1:]:
        shutil.copytree(d, d.with_name(d.name + "-epoch1"))
    with pytest.raises(KeyboardInterrupt):
        train_stacked_runs([(c, d, 1) for c, d in zip(cfgs, part)], arrays, log=quiet, on_epoch=interrupting({(1, 2)}))
    for d in part[1:]:
        shutil.rmtree(d)
        d.with_name(d.name + "-epoch1").rename(d)
    finished = [load_checkpoint(d)["epoch"] for d in part]
    assert finished == [2, 1, 1]
    calls = []
    real = mnistlab.fast.stacked.fit_stacked

    def recording(configs, *a, **k):
        calls.append([c.seed for c in configs])
        return real(configs, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(mnistlab.fast.stacked, "fit_stacked", recording)
    try:
        histories = train_stacked_runs([(c, d, f) for c, d, f in zip(cfgs, part, finished)], arrays, log=quiet)
    finally:
        mp.undo()
    assert calls == [[1, 2], [0]]  # those at the same epoch train together
    assert [len(h) for h in histories] == [3, 3, 3] and [load_checkpoint(d)["epoch"] for d in part] == [3, 3, 3]


def test_a_stacked_seed_resumes_as_a_separate_run(tmp_path, arrays):
    """Its checkpoint holds its own optimizer state and generator: `fit` takes it up like one of its own."""
    cfgs = configs("lenet5-bn", seeds=(0, 1), epochs=3)
    part = dirs(tmp_path, "part", (0, 1))
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(cfgs, arrays, part, log=quiet, on_epoch=interrupting({(1, 1)}))
    whole = fit(cfgs[1], arrays, dirs(tmp_path, "alone", (1,))[0], log=quiet, show_progress=False)
    resumed = fit(cfgs[1], arrays, part[1], resume=load_checkpoint(part[1]), log=quiet, show_progress=False)
    assert len(resumed) == 3
    for a, b in zip(resumed, whole):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)


def test_stacked_evaluation_in_one_pass_gives_each_models_metrics(arrays):
    cfgs = configs("lenet5-bn", seeds=(0, 1))
    models = [build(c, CPU)[0] for c in cfgs]
    stacked = stacked_of(models, "lenet5-bn")
    splits = [metric_splits(split_dataset(arrays, c.val_size, c.seed, CPU), c.train_eval_size, c.seed) for c in cfgs]
    together = stacked_epoch_metrics(stacked, splits, batch_size=64)
    for model, split, row in zip(models, splits, together):
        for name, images, labels in split.items():
            loss, acc = evaluate(model, images, labels, 64)
            assert row[f"{name}_acc"] == pytest.approx(acc) and row[f"{name}_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize(
    "cfgs,match",
    [
        ([TrainConfig(seed=0), TrainConfig(seed=1, lr=0.1)], "differ in lr"),
        ([TrainConfig(seed=0), TrainConfig(seed=1, nesterov=True)], "differ in nesterov"),
        ([TrainConfig(seed=2), TrainConfig(seed=2)], "distinct seeds"),
        ([], "at least one"),
        ([TrainConfig(seed=0, freeze_first_at=0.5), TrainConfig(seed=1, freeze_first_at=0.5)], "freeze_first_at"),
    ],
)
def test_only_seeds_of_one_configuration_stack(cfgs, match):
    with pytest.raises(ValueError, match=match):
        check_stackable(cfgs)


def test_a_run_whose_first_layer_freezes_trains_alone():
    assert mnistlab.fast.stacked.worth_stacking(TrainConfig(), CPU)
    assert not mnistlab.fast.stacked.worth_stacking(TrainConfig(freeze_first_at=0.5), CPU)
