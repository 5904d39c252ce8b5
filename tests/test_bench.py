import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mnistlab.train
from mnistlab.bench import UsualMNIST, time_to_target, usual_loader
from mnistlab.cli import main
from mnistlab.engine import RECIPES, TrainConfig, normalize, prepare_model, recipe_config
from mnistlab.errors import UserError
from mnistlab.models import BatchNorm2d, MaxPool2x2, create_model
from synthetic import make_arrays, use_synthetic_data

TINY = ["--repeats", "1", "--eval-repeats", "1", "--usual-samples", "64", "--warmup-batches", "1", "--seeds", "2", "--threads", "1"]


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
    for section in ("## Training throughput", "## Evaluation throughput", "## Peak memory",
                    "## Time to 99.0% test accuracy", "## Targets", "extrapolated", "torch " + torch.__version__):  # fmt: skip
        assert section in report, section
    if not torch.cuda.is_available():
        assert "no GPU was reachable" in report
    result = json.loads(out.with_suffix(".json").read_text())
    assert {(r["model"], r["batch_size"]) for r in result["train"]} == {(m, b) for m in ("lenet5", "mlp") for b in (64, 256)}
    for row in result["train"]:
        assert row["mnistlab"]["samples_per_second"]["median"] > 0 and row["usual"]["samples_per_second"]["median"] > 0
        pairs = zip(row["mnistlab"]["samples_per_second"]["runs"], row["usual"]["samples_per_second"]["runs"])
        assert row["ratio"]["runs"] == pytest.approx([e / u for e, u in pairs])
    assert [r["model"] for r in result["eval"]] == ["lenet5", "mlp"]
    assert result["memory"]["peak_rss_bytes"] > 50 * 2**20  # a real process with torch loaded
    assert result["memory"]["config"]["model"] == "lenet5" and result["memory"]["config"]["batch_size"] == 64
    assert [r["seed"] for r in result["time_to_target"]["runs"]] == [0, 1]
    assert result["time_to_target"]["config"]["batch_size"] == RECIPES["fast"]["batch_size"]
    assert len(result["targets"]) == 3
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cores"] >= 1
    assert f"wrote {out}" in capsys.readouterr().out


def test_time_to_target_counts_training_seconds_up_to_the_first_epoch_at_99(monkeypatch, synthetic_data):
    def fake_fit(config, arrays, out_dir, **kwargs):
        accs = [0.97, 0.991, 0.989, 0.995] if config.seed == 0 else [0.95, 0.96, 0.97, 0.98]
        return [{"epoch_seconds": 2.0 + e, "test_acc": a, "val_acc": a - 0.01} for e, a in enumerate(accs)]

    monkeypatch.setattr(mnistlab.train, "fit", fake_fit)
    hit, missed = time_to_target(synthetic_data, TrainConfig(epochs=4), seeds=2)
    assert (hit["epoch"], hit["seconds"]) == (2, 2.0 + 3.0)
    assert (missed["epoch"], missed["seconds"]) == (None, None)
    assert hit["val_acc"] == pytest.approx([0.96, 0.981, 0.979, 0.985])


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


# ---------------------------------------------------------------- the engine's speed-ups keep the math


def tie_heavy(shape):
    """Random maps with stretches of equal values, as convolutions of MNIST's flat background give."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[: shape[0] // 4] = 0.5
    x[shape[0] // 4 : shape[0] // 2] = torch.randint(0, 3, x[shape[0] // 4 : shape[0] // 2].shape).float()
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(16, 6, 24, 24), (16, 16, 8, 8), (4, 1, 6, 10)])
def test_fast_max_pool_gives_exactly_max_pool2d(shape):
    x = tie_heavy(shape)
    with torch.inference_mode():
        fast = MaxPool2x2()(x)
    assert torch.equal(fast, F.max_pool2d(x, 2))
    assert fast.is_contiguous(memory_format=torch.channels_last)
    # with autograd it is max_pool2d itself: the gradient goes to the first maximum of each window
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(fast.shape)
    MaxPool2x2()(a).backward(grad)
    F.max_pool2d(b, 2).backward(grad)
    assert torch.equal(a.grad, b.grad)


def test_batch_norm_in_nchw_matches_the_channels_last_kernel():
    x = tie_heavy((32, 6, 24, 24)) + torch.randn(32, 6, 24, 24).contiguous(memory_format=torch.channels_last)
    ours, reference = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(a), reference(b)
    assert out_a.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_b)
    out_a.backward(grad)
    out_b.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)


@pytest.mark.parametrize("name", ["lenet5", "lenet5-reg"])
def test_evaluation_fast_paths_give_the_logits_of_the_plain_forward(name):
    torch.manual_seed(0)
    model = prepare_model(create_model(name), torch.device("cpu")).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # statistics and an affine part far from the identity, a negative scale among them
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 3)
        norm.weight.data.uniform_(-2, 2)
        norm.bias.data.uniform_(-1, 1)
    images = normalize(torch.from_numpy(make_arrays(64, 1).train_images))
    with torch.inference_mode():
        fast = model(images)
    plain = model(images).detach()  # grad enabled: max_pool2d itself, the batch norms unfolded
    if name == "lenet5":
        assert torch.equal(fast, plain)
    else:  # folding the batch norms into the convolutions only reorders the arithmetic
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        assert not torch.equal(fast, plain)  # the folded path did run
