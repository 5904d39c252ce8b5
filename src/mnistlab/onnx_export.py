"""A model -> one self-contained ONNX file, checked against PyTorch by ONNX Runtime.

The file holds the plain model from `create_model` in evaluation mode (no dropout, batch norm
on its running statistics) with its weights inside, at opset OPSET. Its input `images` is
float32 (N, 1, 28, 28), any N, normalized as in training (`engine.normalize`):
`(pixels / 255 - MEAN) / STD` for uint8 pixels, white digit on black as in MNIST. Its output
`logits` is float32 (N, number of classes). MEAN, STD and the class names are in the file's
metadata (`session.get_modelmeta().custom_metadata_map` in onnxruntime).

onnx, onnxscript and onnxruntime are the optional `export` extra (about 120 MB installed):
they are imported inside the functions that use them, never at module level, so that the
other commands start, and run, without them.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnistlab import __version__
from mnistlab.datasets import NUM_CLASSES
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_open
from mnistlab.inputs import MEAN, STD, normalize, predict_logits

OPSET = 20
INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-3  # the largest absolute logit difference from PyTorch that passes verification
EXTRA = ("onnx", "onnxscript", "onnxruntime")
INSTALL = "pip install 'mnistlab[export]' (in a checkout: pip install -e '.[export]')"
NORMALIZATION = (
    f"images = (pixels / 255 - {MEAN}) / {STD}, pixels uint8 (N, 1, 28, 28), white digit on black as in MNIST"
)


class VerificationFailed(Exception):
    """The exported file does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Verification:
    images: int
    max_abs_diff: float  # largest absolute logit difference, ONNX Runtime against PyTorch
    differing: int  # images whose predicted class differs
    accuracy: float | None  # ONNX Runtime's, when labels were given


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size: int  # bytes
    export_s: float  # torch.onnx.export and serialization, without verification
    verification: Verification


def require_extra(names: tuple[str, ...] = EXTRA) -> None:
    """Import the `export` extra (or the named part of it), or fail with one line that says how to install it."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"ONNX needs the optional `export` extra ({name} is not installed): {INSTALL}") from None


def metadata(model_name: str, dataset: str, classes: tuple[str, ...]) -> dict[str, str]:
    """What a user of the file needs to feed it and read its answer, as ONNX metadata."""
    return {
        "model": model_name,
        "dataset": dataset,
        "classes": json.dumps(list(classes)),
        "mean": repr(MEAN),
        "std": repr(STD),
        "normalization": NORMALIZATION,
        "mnistlab_version": __version__,
    }


def to_onnx(model: nn.Module, props: dict[str, str]) -> bytes:
    """The model in evaluation mode as a serialized ONNX model, weights included, batch size dynamic."""
    require_extra()
    model = model.cpu().eval()
    example = torch.zeros(2, 1, 28, 28)  # a batch of 1 would be specialized into the graph
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    proto = program.model_proto  # serialized here, weights and all: nothing goes to a separate .onnx.data file
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"{props.get('model', 'model')} from mnistlab: input {NORMALIZATION}; output logits (N, classes)"
    return proto.SerializeToString()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs a warning per torchvision operator it cannot register and raises
    # FutureWarnings from torch internals; none of them concerns a user of mnistlab.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def is_onnx_model(path: Path) -> bool:
    """Whether `path` holds an ONNX model (a graph with operators): the only kind of file `export --force` replaces."""
    require_extra(("onnx",))
    import onnx  # the optional extra; see the module docstring

    try:
        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a file protobuf cannot read as a model is not one
        return False
    return model.ir_version > 0 and len(model.opset_import) > 0 and len(model.graph.node) > 0


def load_session(source: str | os.PathLike | bytes):
    """An onnxruntime session on the CPU for an exported file (a path) or its bytes."""
    require_extra(("onnxruntime",))
    import onnxruntime as ort  # the optional extra; see the module docstring

    from_bytes = isinstance(source, bytes)
    name = "the exported model" if from_bytes else str(source)
    if not from_bytes and not Path(source).is_file():
        raise UserError(f"{name}: no such file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a user needs no notes about graph optimizations
    try:
        session = ort.InferenceSession(
            source if from_bytes else os.fspath(source), options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # noqa: BLE001 - any failure to read a user's file is that file's problem
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{name}: not a readable ONNX model ({first_line[:200]})") from None
    problem = signature_problem(session)
    if problem:
        raise UserError(f"{name}: not a model `mnistlab export` writes: {problem}")
    return session


def signature_problem(session) -> str | None:
    """How an ONNX Runtime session's model differs from what `export` writes, or None: one input
    `images`, float32 (N, 1, 28, 28) for any N; one output `logits`, float32 (N, 10); ten names in
    the metadata's `classes`, when the file has them."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = ([i.name for i in inputs], [o.name for o in outputs])
    if names != ([INPUT], [OUTPUT]):
        return f"inputs {names[0]}, outputs {names[1]}; expected one input {INPUT!r} and one output {OUTPUT!r}"
    (images,), (logits,) = inputs, outputs
    if images.type != "tensor(float)" or logits.type != "tensor(float)":
        return f"{INPUT} is {images.type}, {OUTPUT} {logits.type}; expected tensor(float) for both"
    shape = list(images.shape)
    if len(shape) != 4 or shape[1:] != [1, 28, 28] or isinstance(shape[0], int):
        return f"{INPUT} has shape {shape}; expected (N, 1, 28, 28) for any batch size N"
    classes = class_names(session)
    out = list(logits.shape)
    if len(out) != 2 or (isinstance(out[1], int) and out[1] != NUM_CLASSES):
        return f"{OUTPUT} has shape {out}; expected (N, {NUM_CLASSES})"
    if classes is not None and (classes is False or len(classes) != NUM_CLASSES):
        return f"its metadata's classes are not a list of {NUM_CLASSES} names"
    return None


def class_names(session) -> list[str] | None | bool:
    """The class names in the file's metadata; None when it has none, False when they are not a list of names."""
    text = session.get_modelmeta().custom_metadata_map.get("classes")
    if text is None:
        return None
    try:
        classes = json.loads(text)
    except ValueError:
        return False
    return classes if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes) else False


def onnx_logits(session, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 logits (N, classes), normalized as in training."""
    batches = []
    for start in range(0, len(images), batch_size):
        inputs = normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
        try:
            (logits,) = session.run([OUTPUT], {INPUT: inputs.numpy()})
        except Exception as e:  # noqa: BLE001 - a model that cannot run on its own declared input is the file's fault
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"the ONNX model fails on {len(inputs)} image(s): {first_line[:200]}") from None
        if logits.dtype != np.float32 or logits.shape != (len(inputs), NUM_CLASSES):
            raise UserError(
                f"the ONNX model answers {logits.dtype} {list(logits.shape)} for {len(inputs)} image(s); "
                f"expected float32 ({len(inputs)}, {NUM_CLASSES})"
            )
        batches.append(logits)
    return np.concatenate(batches)


def predict_probabilities(session, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> class probabilities float64 (N, classes), as predict.predict_probabilities."""
    return torch.softmax(torch.from_numpy(onnx_logits(session, images)).double(), dim=1).numpy()


def verify(session, model: nn.Module, images: np.ndarray, labels: np.ndarray | None = None) -> Verification:
    """Compare ONNX Runtime's logits with the PyTorch model's on the same uint8 images (N, 28, 28)."""
    expected = predict_logits(model.cpu(), torch.from_numpy(np.ascontiguousarray(images))).numpy()
    got = onnx_logits(session, images)
    if got.shape != expected.shape:
        return Verification(len(images), float("inf"), len(images), None)
    predictions = got.argmax(1)
    return Verification(
        images=len(images),
        max_abs_diff=float(np.abs(got - expected).max()) if len(images) else 0.0,
        differing=int((predictions != expected.argmax(1)).sum()),
        accuracy=None if labels is None else float((predictions == labels).mean()),
    )


def export(
    model: nn.Module,
    path: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None,
    props: dict[str, str],
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export `model` to `path`, checked by ONNX Runtime on `images` first; `path` is replaced only if it passes.

    Logits that differ from PyTorch's by more than `tolerance` raise VerificationFailed; the
    file is then never written, and whatever was at `path` before is left as it was.
    """
    path = Path(path)
    with atomic_open(path, "wb") as f:  # opened first, so an unwritable directory fails before the slow part
        start = time.perf_counter()
        data = to_onnx(model, props)
        export_s = time.perf_counter() - start
        try:
            check = verify(load_session(data), model, images, labels)
        except Exception as e:  # noqa: BLE001 - whatever stops ONNX Runtime, the file is not usable
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VerificationFailed(
                f"ONNX Runtime cannot run the exported model ({first_line[:200]}); {path} was not written"
            ) from None
        if not check.max_abs_diff <= tolerance:  # `not <=` also catches NaN
            raise VerificationFailed(
                f"largest logit difference from PyTorch {check.max_abs_diff:.3g} exceeds the tolerance {tolerance:g} "
                f"({check.differing} of {check.images} predictions differ); {path} was not written"
            )
        f.write(data)
    return ExportResult(path, len(data), export_s, check)
