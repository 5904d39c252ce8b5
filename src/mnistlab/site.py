"""The draw-a-digit page without a server: a folder to open from disk or put on any static host.

The page is the one `mnistlab serve` serves (static/: one copy of its HTML, JS and CSS). Served,
it asks the server; here it runs the models itself, with forward.js, from site-data.js:

  OUT/index.html            the page, with site-data.js added before its own scripts
  OUT/static/               app.js, forward.js, style.css, as the package holds them
  OUT/site-data.js          sets window.MNISTLAB_SITE: each model's layers and weights (base64 of
                            little-endian float32), the study's curves and summary, a few test digits
  OUT/study/*.png           the study's figures, when there is a study
  OUT/.mnistlab-site        marks a folder this module wrote: a rebuild may replace it, nothing else

The data is a script rather than JSON because a page opened from file:// cannot fetch() files.
A build is written into a temporary folder beside OUT and renamed into place, so OUT is never
half-written; an interrupted build leaves OUT as it was.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnistlab import __version__
from mnistlab.data import default_data_dir, load_dataset
from mnistlab.errors import UserError
from mnistlab.fast.layers import is_plain_2x2
from mnistlab.inputs import MEAN, STD
from mnistlab.inside import layer_outputs, layers_in_order, stage_title
from mnistlab.server import ServedModel
from mnistlab.transform import read_robustness

MARKER = ".mnistlab-site"
PAGE_FILES = ("index.html", "app.js", "forward.js", "style.css")
DATA_SCRIPT = '<script src="site-data.js" defer></script>\n  '
FIRST_SCRIPT = '<script src="static/forward.js" defer></script>'  # the data goes before it
TEST_DIGITS = 100  # of the test set, for "try a test digit" (78 kB)


def encode(t: torch.Tensor) -> str:
    """A tensor's values, row-major, as base64 of little-endian float32 (as inside.encode)."""
    return base64.b64encode(t.detach().cpu().numpy().astype("<f4").tobytes()).decode("ascii")


def browser_layers(model: nn.Module, name: str) -> list[dict]:
    """The model's layers in order, as forward.js runs them; a layer it cannot run is a UserError that says which."""
    layers = []
    for layer in layers_in_order(model):
        if isinstance(layer, nn.Conv2d) and is_plain_conv(layer):
            bias = None if layer.bias is None else encode(layer.bias)
            layers.append(
                {
                    "type": "conv2d",
                    "in": layer.in_channels,
                    "out": layer.out_channels,
                    "kernel": layer.kernel_size[0],
                    "weight": encode(layer.weight),
                    "bias": bias,
                }
            )
        elif isinstance(layer, nn.BatchNorm2d) and layer.track_running_stats and layer.affine:
            layers.append(
                {
                    "type": "batchnorm2d",
                    "mean": encode(layer.running_mean),
                    "variance": encode(layer.running_var),
                    "weight": encode(layer.weight),
                    "bias": encode(layer.bias),
                    "eps": layer.eps,
                }
            )
        elif isinstance(layer, nn.MaxPool2d) and is_plain_2x2(layer):
            layers.append({"type": "maxpool2d"})
        elif isinstance(layer, nn.ReLU):
            layers.append({"type": "relu"})
        elif isinstance(layer, nn.Flatten):
            layers.append({"type": "flatten"})
        elif isinstance(layer, nn.Linear):
            bias = None if layer.bias is None else encode(layer.bias)
            layers.append(
                {
                    "type": "linear",
                    "in": layer.in_features,
                    "out": layer.out_features,
                    "weight": encode(layer.weight),
                    "bias": bias,
                }
            )
        elif not isinstance(layer, nn.Dropout):  # dropout does nothing in evaluation
            raise UserError(
                f"model {name}: its layer {layer} cannot run in the browser (the page runs convolutions "
                "with square kernels and no padding or stride, batch norm, 2x2 max-pools, ReLU and "
                "linear layers)"
            )
    return layers


def is_plain_conv(conv: nn.Conv2d) -> bool:
    square = conv.kernel_size[0] == conv.kernel_size[1]
    return square and (conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (0, 0), (1, 1), 1)


def as_written(model: nn.Module) -> nn.Module:
    """A copy of `model` with its layers in models.py's order: the speed wing pools before the ReLU (the same
    values), the page shows each convolution's ReLU before its pool, as the textbook draws it."""
    model = copy.deepcopy(model)
    for layers in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and type(layers[i + 1]) is nn.ReLU:
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return model


def site_model(served: ServedModel) -> dict:
    """A model as the page's /api/models describes it, plus its layers and its stages' names, titles and shapes."""
    model = as_written(served.model).eval()
    layers = browser_layers(model, served.name)
    stages = layer_outputs(model, torch.zeros(1, 28, 28, dtype=torch.uint8))
    names = list(stages)
    has_convs = any(layer["type"] == "conv2d" for layer in layers)
    return {
        **served.describe(),
        "path": served.name,  # not the builder's own folders: the site may go public
        "layers": layers,
        "stages": [
            {"name": n, "title": stage_title(n, names[-1], has_convs), "shape": list(stages[n].shape[1:])}
            for n in names[1:]
        ],
    }


def study_for_site(results: Path) -> tuple[dict, list[Path]]:
    """What the page says about the study whose results.json is `results` (which may not exist),
    and the study's figures (the PNG files beside it) to copy."""
    study = {"results": None, "robustness": None}
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        return study, []
    variants = data.get("variants") if isinstance(data.get("variants"), dict) else {}
    summary = []
    for arm, metrics in (data.get("summary") or {}).items():
        accuracy = metrics.get("test_acc") if isinstance(metrics, dict) else None
        if isinstance(accuracy, dict) and all(isinstance(accuracy.get(k), (int, float)) for k in ("mean", "std", "n")):
            label = variants.get(arm, {}).get("label") if isinstance(variants.get(arm), dict) else None
            kept = {k: accuracy[k] for k in ("mean", "std", "n")}
            summary.append({"arm": arm, "label": label or arm, "test_acc": kept})
    figures = sorted(results.parent.glob("*.png"))
    study.update(
        results=f"{results.parent.name}/{results.name}",
        robustness=read_robustness(results),
        summary=summary or None,
        finished=data.get("finished"),
        figures=[f"study/{f.name}" for f in figures],
    )
    return study, figures


def test_digits(dataset: str = "mnist", data_dir=None, count: int = TEST_DIGITS) -> dict | None:
    """The first `count` test images and labels for "try a test digit"; None when the data is not prepared."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if not data_dir.is_dir():  # looking would create it
        return None
    try:
        data = load_dataset(dataset, data_dir, log=lambda line: None, download=False)
    except UserError:
        return None
    images = np.ascontiguousarray(data.test_images[:count], dtype=np.uint8)
    labels = [int(x) for x in data.test_labels[:count]]
    return {"images": base64.b64encode(images.tobytes()).decode("ascii"), "labels": labels}


def site_data(models: list[ServedModel], study: dict, tests: dict | None) -> dict:
    return {
        "normalization": {"mean": MEAN, "std": STD},
        "models": [site_model(m) for m in models],
        "help": None,
        "study": study,
        "test_digits": tests,
    }


def check_out(out: Path) -> None:
    """Refuse an OUT that a build must not replace: a file, or a folder with things this module did not write."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out}: is a file, not a folder; give the folder to write the site into")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not a site that `mnistlab site` wrote; choose another folder")


def build_site(
    out: str | os.PathLike, models: list[ServedModel], results: Path | None = None, tests: dict | None = None
) -> dict:
    """Write the site for `models` (and the study at `results`, a results.json) into the folder `out`,
    replacing a site written there before. -> {"bytes": the folder's size, "files": how many}."""
    out = Path(out).absolute()  # "." has a name and a parent this way
    check_out(out)
    study, figures = study_for_site(results) if results else ({"results": None, "robustness": None}, [])
    data = site_data(models, study, tests)
    page = (resources.files("mnistlab") / "static" / "index.html").read_text()
    if FIRST_SCRIPT not in page:
        raise RuntimeError(f"static/index.html has no {FIRST_SCRIPT!r} to put the site's data before")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise UserError(f"{out.parent}: cannot write here ({e.strerror or e})") from None
    try:
        (tmp / MARKER).write_text(json.dumps({"written_by": "mnistlab site", "version": __version__}) + "\n")
        (tmp / "index.html").write_text(page.replace(FIRST_SCRIPT, DATA_SCRIPT + FIRST_SCRIPT))
        (tmp / "static").mkdir()
        for name in PAGE_FILES[1:]:
            (tmp / "static" / name).write_bytes((resources.files("mnistlab") / "static" / name).read_bytes())
        (tmp / "site-data.js").write_text(f"window.MNISTLAB_SITE = {json.dumps(data, separators=(',', ':'))};\n")
        if figures:
            (tmp / "study").mkdir()
            for figure in figures:
                shutil.copyfile(figure, tmp / "study" / figure.name)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        replace_folder(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"{out}: cannot write the site ({e.strerror or e}); nothing was changed") from None
        raise
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder `new` to `out`, the old site (if any) out of the way first."""
    if not out.exists():
        os.rename(new, out)
        return
    old = new.with_suffix(".old")
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(out: Path) -> None:
    """Folders that an interrupted build of `out` left beside it (each carries the marker)."""
    for leftover in out.parent.glob(f".{out.name}.*"):
        if leftover.suffix in (".tmp", ".old") and (leftover / MARKER).is_file():
            shutil.rmtree(leftover, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
