"""SDLM's curvature estimate against the loss's own second derivatives, for LeNet-5 (1998) at initialization.

    MNISTLAB_DATA=/path/to/data PYTHONPATH=src python benchmarks/sdlm_curvature.py [--images 100] [--seed 0]

The paper's h_kk (sdlm.curvatures) drops two kinds of terms: the squashing function's second
derivative, and the terms between the connections that share a weight (a convolution's kernel is
shared by every position of its map). This prints, for the first entry of each parameter tensor,
h_kk beside the second derivative of the mean map loss over the images measured by finite
differences, in float64, and their ratio: where they differ is where the approximation is coarse.
"""

from __future__ import annotations

import argparse

import torch

from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.engine import training_loss
from mnistlab.inputs import normalize
from mnistlab.models import create_model
from mnistlab.sdlm import curvatures

EPS = 1e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = TrainConfig(model="lenet5-1998", loss="map")

    def loss(logits, labels):
        return training_loss(logits, labels, config)

    data = load_dataset("mnist", log=lambda line: None)
    images = normalize(torch.from_numpy(data.train_images[: args.images])).double()
    labels = torch.from_numpy(data.train_labels[: args.images]).long()
    model = create_model("lenet5-1998").double()
    model.output.codes = model.output.codes.double()
    estimates = curvatures(model, images, labels, loss)
    print(f"{'parameter':14s} {'h_kk':>10s} {'finite diff.':>12s} {'ratio':>8s}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat, values = param.data.view(-1), []
            for step in (EPS, 0.0, -EPS):
                flat[0] += step
                values.append(float(loss(model(images), labels)))
                flat[0] -= step
            measured = (values[0] - 2 * values[1] + values[2]) / EPS**2
            estimate = float(estimates[param].view(-1)[0])
            print(f"{name:14s} {estimate:10.3e} {measured:12.3e} {measured / estimate:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
