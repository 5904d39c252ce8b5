"""How much of a LeNet-5 training step on a GPU is the host's: the engine's step, the same step written
plainly, and that plain step captured once as a CUDA graph and replayed.

    PYTHONPATH=src python benchmarks/cuda_graph_step.py --out DIR [--steps 400] [--device cuda]

The three alternate, round by round (3 rounds), each timing `--steps` optimizer steps of the
default LeNet-5 configuration (SGD, constant learning rate, no augmentation) at batch 64 and
256 over the training images; the medians go to DIR/cuda_graph.json as ms per step. Then the
kernels that one eager step launches are counted with torch.profiler; and after the timing, the
plain and the graphed model, trained on the same batches (the graph's 3 warm-up steps aside), are
evaluated on the test set, which shows that the replays train. On a CPU (`--device cpu`) only the two eager steps are timed: it checks the script.
This is a probe: the engine does not use CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mnistlab.bench.timing import timed_once
from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.engine import build, evaluate, train_one_epoch
from mnistlab.inputs import normalize


def plain_step(model, optimizer, images, labels, idx):
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(normalize(images[idx])), labels[idx])
    loss.backward()
    optimizer.step()


def captured_step(model, optimizer, images, labels, batch: int):
    """The plain step captured as a CUDA graph (torch.cuda.graph's whole-network recipe); call with the batch's index."""
    idx = torch.randint(len(labels), (batch,), device=images.device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream: the optimizer's buffers exist before capture
        for _ in range(3):
            plain_step(model, optimizer, images, labels, idx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = F.cross_entropy(model(normalize(images[idx])), labels[idx])
        loss.backward()
        optimizer.step()

    def step(batch_idx):
        idx.copy_(batch_idx)
        graph.replay()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    graphs = device.type == "cuda"
    arrays = load_dataset("mnist", log=lambda line: None)
    images = torch.from_numpy(arrays.train_images).to(device)
    labels = torch.from_numpy(arrays.train_labels).long().to(device)
    result = {"device": torch.cuda.get_device_name() if graphs else "cpu", "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)

    for batch in (64, 256):
        config = TrainConfig(model="lenet5", batch_size=batch, val_size=0, device=device.type, schedule="none")
        steps = min(args.steps, len(labels) // batch)  # full batches, within one pass
        n = batch * steps
        order = torch.randperm(len(labels), device=device)[:n]
        batches = [order[i : i + batch] for i in range(0, n, batch)]
        engine, opt_e = build(config, device)
        plain, opt_p = build(config, device)
        generator = torch.Generator().manual_seed(0)
        variants = {
            "engine": lambda: train_one_epoch(engine, opt_e, images[:n], labels[:n], config, generator, 0, 10**9),
            "plain": lambda: [plain_step(plain, opt_p, images, labels, b) for b in batches],
        }
        if graphs:
            graphed, opt_g = build(config, device)
            step = captured_step(graphed, opt_g, images, labels, batch)
            variants["graph"] = lambda: [step(b) for b in batches]
        for fn in variants.values():
            fn()  # warm-up
        times = {name: [] for name in variants}
        for round_ in range(3):
            for name in list(variants)[:: 1 if round_ % 2 == 0 else -1]:
                times[name].append(timed_once(variants[name], device))
        result[f"batch_{batch}"] = {"steps": steps} | {
            name: {"ms_per_step": 1000 * statistics.median(t) / steps, "runs_seconds": t} for name, t in times.items()
        }
        if graphs:  # the replays train: after the same batches, both models should be as accurate
            test_images = torch.from_numpy(arrays.test_images).to(device)
            test_labels = torch.from_numpy(arrays.test_labels).long().to(device)
            result[f"batch_{batch}"]["test_acc"] = {
                name: evaluate(m, test_images, test_labels)[1] for name, m in (("plain", plain), ("graph", graphed))
            }
        print(batch, json.dumps(result[f"batch_{batch}"])[:400], flush=True)
        (args.out / "cuda_graph.json").write_text(json.dumps(result, indent=1) + "\n")

    if graphs:
        config = TrainConfig(model="lenet5", batch_size=64, val_size=0, device="cuda", schedule="none")
        model, optimizer = build(config, device)
        idx = batches[0][:64]
        plain_step(model, optimizer, images, labels, idx)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                plain_step(model, optimizer, images, labels, idx)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        result["kernels_per_eager_step"] = len(kernels) / 10
        result["eager_step_kernels"] = sorted({e.name[:80] for e in kernels})

        print({k: v for k, v in result.items() if k == "kernels_per_eager_step"}, flush=True)
        (args.out / "cuda_graph.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
