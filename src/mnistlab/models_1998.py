"""LeNet-5 as LeCun, Bottou, Bengio and Haffner published it in 1998 ("Gradient-Based Learning Applied
to Document Recognition", section II.B), layer by layer under the paper's names:

  input   the 28x28 digit centred in a 32x32 field, background -0.1 and ink 1.175
  C1      6 maps, 5x5 convolution                                     32 -> 28
  S2      each map's 2x2 sums, times a trainable coefficient, plus a trainable bias   28 -> 14
  C3      16 maps, 5x5, each reading only the S2 maps of Table I      14 -> 10
  S4      as S2                                                       10 -> 5
  C5      120 maps, 5x5 over all 16 S4 maps                            5 -> 1
  F6      84 units
  output  ten Euclidean RBF units over F6, with fixed codes of +1 and -1

Every layer up to F6 is followed by the squashing function f(a) = 1.7159 tanh(2a/3), and every
weight and bias starts uniform in +-2.4 / (the fan-in of its unit). The output unit of class i
computes the penalty y_i = sum_j (x_j - w_ij)^2, the squared distance of F6's state from its
class's code; the model returns the logits -y_i, so that the most likely class is still the
argmax. The paper's loss (its equation 9) is in engine.training_loss, its optimizer in sdlm.py.

Like the other models it reads normalized 28x28 images (inputs.normalize); `PaperInput` turns
them into the paper's 32x32 field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import UserError
from mnistlab.inputs import MEAN, STD

# Table I of the paper: which S2 maps (rows) each C3 map (columns) reads. The first six C3 maps
# read three neighbouring S2 maps, the next six four neighbours, three more four non-neighbours,
# and the last all six: 60 of the 96 pairs, so that different maps extract different features.
TABLE_I = (
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
)

# The output's codes: stylized images of the digits on a 7x12 bitmap, as the paper draws them in
# its Figure 3 ("#" is +1, "." is -1). That figure is not data; these are drawn after its
# description, and their nearest pair still differs in many bits (tests/test_models_1998.py).
DIGIT_BITMAPS = (
    ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", "#.....#",
     "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),  # 0
    ("...#...", "..##...", ".#.#...", "...#...", "...#...", "...#...",
     "...#...", "...#...", "...#...", "...#...", "...#...", ".#####."),  # 1
    ("..###..", ".#...#.", "#.....#", "......#", ".....#.", "....#..",
     "...#...", "..#....", ".#.....", "#......", "#......", "#######"),  # 2
    (".#####.", "#.....#", "......#", "......#", ".....#.", "..###..",
     ".....#.", "......#", "......#", "......#", "#.....#", ".#####."),  # 3
    ("....##.", "...#.#.", "..#..#.", ".#...#.", "#....#.", "#....#.",
     "#######", ".....#.", ".....#.", ".....#.", ".....#.", ".....#."),  # 4
    ("#######", "#......", "#......", "#......", "######.", "......#",
     "......#", "......#", "......#", "......#", "#.....#", ".#####."),  # 5
    ("..####.", ".#.....", "#......", "#......", "#.###..", "##...#.",
     "#.....#", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),  # 6
    ("#######", "......#", "......#", ".....#.", ".....#.", "....#..",
     "....#..", "...#...", "...#...", "..#....", "..#....", "..#...."),  # 7
    ("..###..", ".#...#.", "#.....#", "#.....#", ".#...#.", "..###..",
     ".#...#.", "#.....#", "#.....#", "#.....#", ".#...#.", "..###.."),  # 8
    ("..###..", ".#...#.", "#.....#", "#.....#", "#.....#", ".#...##",
     "..###.#", "......#", "......#", ".....#.", "....#..", ".###..."),  # 9
)  # fmt: skip

BACKGROUND, INK = -0.1, 1.175  # the input's levels: its mean is then roughly 0 and its variance roughly 1


class PaperInput(nn.Module):
    """Normalized 28x28 images -> the paper's 32x32 field: background -0.1, ink 1.175, 2 pixels of background around."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * STD + MEAN  # back to [0, 1], undoing inputs.normalize
        return F.pad(BACKGROUND + (INK - BACKGROUND) * pixels, (2, 2, 2, 2), value=BACKGROUND)


class Squash(nn.Module):
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159 and S = 2/3, so that f(1) = 1 and f(-1) = -1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2 / 3))


class Subsampling(nn.Module):
    """S2 and S4: each map's 2x2 sums (stride 2), times a trainable coefficient, plus a trainable bias, per map."""

    def __init__(self, maps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(maps))
        self.bias = nn.Parameter(torch.empty(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = 4 * F.avg_pool2d(x, 2)
        return sums * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class TableConv(nn.Module):
    """C3: a 5x5 convolution in which output map j reads input map i only where table[i][j] is "X".

    Only the connected kernels are parameters (one 5x5 kernel per "X"); the forward places them
    in a full kernel of zeros, so that the unconnected pairs contribute nothing and learn nothing.
    """

    def __init__(self, table: tuple[str, ...], kernel_size: int = 5):
        super().__init__()
        self.in_maps, self.out_maps = len(table), len(table[0])
        pairs = [(j, i) for i, row in enumerate(table) for j, mark in enumerate(row) if mark == "X"]
        self.register_buffer("outputs", torch.tensor([j for j, _ in pairs]), persistent=False)
        self.register_buffer("inputs", torch.tensor([i for _, i in pairs]), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(pairs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.weight.new_zeros(self.out_maps, self.in_maps, *self.weight.shape[1:])
        kernels[self.outputs, self.inputs] = self.weight
        return F.conv2d(x, kernels, self.bias)

    def fan_ins(self) -> torch.Tensor:
        """The number of input maps each output map reads."""
        return torch.bincount(self.outputs, minlength=self.out_maps)


class EuclideanRBF(nn.Module):
    """The output layer: unit i's penalty y_i = sum_j (x_j - code_ij)^2, returned as the logits -y_i.

    The codes are fixed (a buffer, not a parameter): the paper sets them by hand and keeps them.
    """

    def __init__(self, codes: torch.Tensor):
        super().__init__()
        self.register_buffer("codes", codes, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        penalties = (x.unsqueeze(1) - self.codes).square().sum(2)  # (N, classes, 84) -> (N, classes)
        return -penalties


def digit_codes(num_classes: int = 10) -> torch.Tensor:
    """The first `num_classes` digits' codes, (num_classes, 84): each 7x12 bitmap row by row, +1 for "#", -1 for "."."""
    if not 1 <= num_classes <= len(DIGIT_BITMAPS):
        raise UserError(f"LeNet-5 (1998)'s output has codes for {len(DIGIT_BITMAPS)} digits, not {num_classes} classes")
    rows = ["".join(DIGIT_BITMAPS[digit]) for digit in range(num_classes)]
    return torch.tensor([[1.0 if mark == "#" else -1.0 for mark in row] for row in rows])


class LeNet5_1998(nn.Module):
    """LeNet-5 as published in 1998 (see the module): 60,000 trainable parameters.

    Each switch makes one of the changes that lead to the textbook LeNet-5 (models.LeNet5), for the
    study of the road from 1998 to today: `relu` for the squashing function, `max_pool` for the
    trainable subsampling of S2 and S4, `full_c3` for Table I (every C3 map reads every S2 map),
    `linear_output` for the RBF output (ten linear units, whose logits go to softmax cross-entropy).
    """

    stages = ("input", "C1", "S2", "C3", "S4", "C5", "F6", "output")  # in the order forward runs them

    def __init__(
        self,
        num_classes: int = 10,
        relu: bool = False,
        max_pool: bool = False,
        full_c3: bool = False,
        linear_output: bool = False,
    ):
        super().__init__()
        squash = nn.ReLU if relu else Squash
        self.input = PaperInput()
        self.C1 = nn.Sequential(nn.Conv2d(1, 6, 5), squash())  # 32 -> 28
        self.S2 = nn.MaxPool2d(2) if max_pool else nn.Sequential(Subsampling(6), squash())  # 28 -> 14
        self.C3 = nn.Sequential(nn.Conv2d(6, 16, 5) if full_c3 else TableConv(TABLE_I), squash())  # 14 -> 10
        self.S4 = nn.MaxPool2d(2) if max_pool else nn.Sequential(Subsampling(16), squash())  # 10 -> 5
        self.C5 = nn.Sequential(nn.Conv2d(16, 120, 5), squash(), nn.Flatten())  # 5 -> 1
        self.F6 = nn.Sequential(nn.Linear(120, 84), squash())
        self.output = nn.Linear(84, num_classes) if linear_output else EuclideanRBF(digit_codes(num_classes))
        paper_init(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.S2(self.C1(self.input(images)))
        x = self.S4(self.C3(x))
        return self.output(self.F6(self.C5(x)))


@torch.no_grad()
def paper_init(model: nn.Module) -> None:
    """Every weight and bias uniform in +-2.4 / F, F the fan-in of its unit (the paper's appendix A), so
    that the squashing functions start in their roughly linear range."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            fan_in = module.in_features
        elif isinstance(module, Subsampling):
            fan_in = 4  # the 2x2 window
        elif isinstance(module, TableConv):
            fan_ins = module.fan_ins().float() * module.weight[0].numel()  # each output map's unit: its maps x 25
            bound = 2.4 / fan_ins
            module.weight.uniform_(-1, 1).mul_(bound[module.outputs].view(-1, 1, 1))
            module.bias.uniform_(-1, 1).mul_(bound)
            continue
        else:
            continue
        for param in module.parameters(recurse=False):
            param.uniform_(-2.4 / fan_in, 2.4 / fan_in)


def parameter_table_1998(model: LeNet5_1998) -> list[tuple[str, str, int]]:
    """models.parameter_table for the 1998 network: one row per layer with parameters, under the paper's names."""
    rows = []
    for name in model.stages:
        layer = getattr(model, name)
        own = next((m for m in layer.modules() if any(True for _ in m.parameters(recurse=False))), None)
        if isinstance(own, (nn.Conv2d, nn.Linear)):
            shape = f"{own.in_channels}x5x5" if isinstance(own, nn.Conv2d) else f"{own.in_features}"
            out = own.out_channels if isinstance(own, nn.Conv2d) else own.out_features
            rows.append((name, f"({shape}+1)x{out}", own))
        elif isinstance(own, Subsampling):
            rows.append((name, f"(1+1)x{len(own.weight)}", own))
        elif isinstance(own, TableConv):
            groups = torch.bincount(own.fan_ins()).tolist()  # how many C3 maps read 0, 1, ... S2 maps
            rows.append((name, "+".join(f"({n}x5x5+1)x{maps}" for n, maps in enumerate(groups) if maps), own))
    return [(name, formula, sum(p.numel() for p in layer.parameters())) for name, formula, layer in rows]
