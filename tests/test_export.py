"""`mnistlab export` and `predict --onnx`: every registered model as one ONNX file, checked by ONNX Runtime.

An export takes seconds, so each model is exported once per module, through the command,
from a seeded untrained checkpoint (batch-norm statistics made non-trivial) and verified on
synthetic test images. Tests that only need the write-and-verify logic hand the command
bytes from those exports instead of exporting again.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from synthetic import (
    draw_digit,
    make_arrays,
    use_synthetic_data,
    with_batch_norm_statistics,
)

from mnistlab import cli, onnx_export
from mnistlab.checkpoint import load_model, save_checkpoint
from mnistlab.inputs import MEAN, STD, normalize
from mnistlab.models import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"
N_TEST = 200
# one test process runs this module, so that each model is exported once (export_once), not once in each
pytestmark = pytest.mark.xdist_group("export")


def save_run(run_dir: Path, model_name: str, seed: int = 0) -> Path:
    """An untrained checkpoint whose batch norms have running statistics far from 0 and 1
    (an export that dropped a norm or used batch statistics would otherwise pass)."""
    model = with_batch_norm_statistics(model_name, seed)
    save_checkpoint(
        run_dir / "checkpoint.pt",
        model_name=model_name,
        model_kwargs={},
        config={"model": model_name, "dataset": "mnist", "seed": seed},
        epoch=1,
        metrics=[{"epoch": 1, "val_acc": 0.1}],
        model_state=model.state_dict(),
    )
    return run_dir


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def export_once(tmp_path_factory):
    """model name -> (run directory, ONNX file, the command's stdout), exported on first use."""
    done = {}

    def export(name: str):
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            run_dir, path = save_run(tmp / "run", name), tmp / "out" / f"{name}.onnx"
            with pytest.MonkeyPatch.context() as mp:
                use_synthetic_data(mp, 10, N_TEST)
                code, stdout, stderr = run_cli(["export", str(run_dir), "--onnx", str(path)])
            assert code == 0, stderr
            done[name] = run_dir, path, stdout
        return done[name]

    return export


@pytest.fixture(params=list(MODELS))
def exported(request, export_once):
    return (request.param, *export_once(request.param))


# --- every registered model ------------------------------------------------------------------


def test_export_verifies_every_model_and_writes_one_self_contained_file(exported):
    name, run_dir, path, stdout = exported
    difference = float(re.search(r"largest logit difference (\S+)", stdout).group(1))
    assert difference <= 1e-4
    assert f"({N_TEST} images)" in stdout and "0 differing predictions" in stdout
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .onnx.data, no temporary file
    proto = onnx.load(path, load_external_data=False)
    assert proto.graph.initializer and not any(
        onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer
    )
    assert proto.opset_import[0].version == onnx_export.OPSET
    # evaluation form: no dropout, and batch norm (when not folded into the convolutions) on running statistics
    assert not [n for n in proto.graph.node if n.op_type == "Dropout"]
    for node in (n for n in proto.graph.node if n.op_type == "BatchNormalization"):
        assert all(a.i == 0 for a in node.attribute if a.name == "training_mode")


def test_exported_file_takes_any_batch_size_and_matches_pytorch(exported):
    name, run_dir, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (images_input,), (logits_output,) = session.get_inputs(), session.get_outputs()
    assert (images_input.name, logits_output.name) == ("images", "logits")
    assert isinstance(images_input.shape[0], str) and images_input.shape[1:] == [1, 28, 28]
    model, _ = load_model(run_dir)
    for n in (1, 7):
        images = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = model(images).numpy()
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        assert logits.shape == (n, 10)
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_metadata_states_the_normalization(exported):
    name, _, path, _ = exported
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert float(meta["mean"]) == MEAN and float(meta["std"]) == STD
    assert meta["model"] == name and json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert f"{MEAN}" in meta["normalization"] and f"{STD}" in meta["normalization"]


def test_predict_with_the_onnx_file_matches_the_checkpoint(exported, tmp_path):
    _, run_dir, path, _ = exported
    images = []
    for digit, paper, ink in [(1, 255, 0), (4, 0, 255), (7, 230, 20)]:
        images.append(tmp_path / f"{digit}.png")
        draw_digit(digit, paper=paper, ink=ink).save(images[-1])
    code, torch_out, _ = run_cli(["predict", str(run_dir), *map(str, images), "--json"])
    assert code == 0
    code, onnx_out, _ = run_cli(["predict", "--onnx", str(path), *map(str, images), "--json"])
    assert code == 0
    by_torch, by_onnx = json.loads(torch_out), json.loads(onnx_out)
    assert [r["image"] for r in by_onnx] == [str(p) for p in images]
    assert [r["digit"] for r in by_onnx] == [r["digit"] for r in by_torch]
    np.testing.assert_allclose([r["probabilities"] for r in by_onnx], [r["probabilities"] for r in by_torch], atol=2e-6)


# --- verification, overwriting and bad input -------------------------------------------------


def export_bytes(monkeypatch, data: bytes) -> None:
    """Make the command's exporter produce `data`, whatever model it is given."""
    monkeypatch.setattr(onnx_export, "to_onnx", lambda model, props: data)


def test_a_file_that_computes_something_else_fails_verification_and_is_not_written(export_once, tmp_path, monkeypatch):
    _, lenet5_file, _ = export_once("lenet5")
    previous = export_once("mlp-small")[1].read_bytes()  # exported before export_bytes is replaced below
    other = save_run(tmp_path / "other", "lenet5", seed=1)  # same architecture, other weights
    use_synthetic_data(monkeypatch, 10, N_TEST)
    export_bytes(monkeypatch, lenet5_file.read_bytes())
    out = tmp_path / "out" / "model.onnx"
    code, _, stderr = run_cli(["export", str(other), "--onnx", str(out)])
    assert code == 1
    assert (
        len(stderr.strip().splitlines()) == 1 and "verification failed" in stderr and "exceeds the tolerance" in stderr
    )
    assert not out.exists() and list(out.parent.iterdir()) == []

    out.write_bytes(previous)  # --force replaces only an ONNX model
    assert run_cli(["export", str(other), "--onnx", str(out), "--force"])[0] == 1
    assert out.read_bytes() == previous

    export_bytes(monkeypatch, b"not an ONNX model")  # a file ONNX Runtime cannot even load
    code, _, stderr = run_cli(["export", str(other), "--onnx", str(out), "--force"])
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "ONNX Runtime cannot run" in stderr
    assert out.read_bytes() == previous and [p.name for p in out.parent.iterdir()] == [out.name]


def test_force_replaces_an_existing_file_and_without_it_the_file_is_kept(export_once, tmp_path, monkeypatch):
    run_dir, lenet5_file, _ = export_once("lenet5")
    previous = export_once("mlp-small")[1].read_bytes()  # exported before export_bytes is replaced below
    use_synthetic_data(monkeypatch, 10, N_TEST)
    export_bytes(monkeypatch, lenet5_file.read_bytes())
    out = tmp_path / "model.onnx"
    out.write_bytes(previous)
    code, _, stderr = run_cli(["export", str(run_dir), "--onnx", str(out)])
    assert code == 2 and stderr.strip().endswith("exists; pass --force to replace it") and len(stderr.splitlines()) == 1
    assert out.read_bytes() == previous
    assert run_cli(["export", str(run_dir), "--onnx", str(out), "--force"])[0] == 0
    assert out.read_bytes() == lenet5_file.read_bytes()


@pytest.mark.parametrize("target", ["checkpoint.pt", "config.json", "metrics.csv", "notes.txt"])
def test_force_never_replaces_what_export_does_not_write(target, export_once, tmp_path, monkeypatch):
    run_dir = save_run(tmp_path / "run", "lenet5")
    (run_dir / "config.json").write_text('{"model": "lenet5"}\n')
    (run_dir / "metrics.csv").write_text("epoch,val_acc\n1,0.1\n")
    (run_dir / "notes.txt").write_text("{ not a model }")
    use_synthetic_data(monkeypatch, 10, N_TEST)
    export_bytes(monkeypatch, export_once("lenet5")[1].read_bytes())
    before = (run_dir / target).read_bytes()
    code, _, stderr = run_cli(["export", str(run_dir), "--onnx", str(run_dir / target), "--force"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "is not an ONNX model" in stderr and "left as it is" in stderr
    assert (run_dir / target).read_bytes() == before


def test_a_directory_path_or_a_symbolic_link_is_never_written(export_once, tmp_path, monkeypatch):
    run_dir = save_run(tmp_path / "run", "lenet5")
    use_synthetic_data(monkeypatch, 10, N_TEST)
    export_bytes(monkeypatch, export_once("lenet5")[1].read_bytes())
    code, _, stderr = run_cli(["export", str(run_dir), "--onnx", f"{tmp_path}/newdir/"])
    assert code == 2 and "is a directory" in stderr and not (tmp_path / "newdir").exists()
    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "nowhere")  # dangling: it exists() as nothing, yet it is there
    for force in ([], ["--force"]):
        code, _, stderr = run_cli(["export", str(run_dir), "--onnx", str(link), *force])
        assert code == 2 and "symbolic link" in stderr and len(stderr.strip().splitlines()) == 1
        assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("case", ["missing", "corrupt", "not a checkpoint"])
def test_a_bad_checkpoint_is_one_line_and_exit_2(case, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    if case == "corrupt":
        checkpoint.write_bytes(b"\x80\x02 not a pickle")
    elif case == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, checkpoint)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(["export", str(checkpoint), "--onnx", str(out)])
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1 and str(checkpoint) in stderr
    assert not out.exists()


def test_an_unwritable_destination_is_one_line_and_exit_2(export_once, tmp_path, monkeypatch):
    run_dir, _, _ = export_once("lenet5")
    use_synthetic_data(monkeypatch, 10, N_TEST)
    monkeypatch.setattr(
        onnx_export, "to_onnx", lambda model, props: pytest.fail("exported before the destination was checked")
    )
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    for out in (blocker / "model.onnx", tmp_path):  # a directory that cannot be made, a directory as the file
        code, _, stderr = run_cli(["export", str(run_dir), "--onnx", str(out)])
        assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("missing", onnx_export.EXTRA)
def test_without_the_extra_export_says_how_to_install_it(missing, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    run_dir = save_run(tmp_path / "run", "lenet5")
    code, stdout, stderr = run_cli(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")])
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert missing in stderr and "pip install 'mnistlab[export]'" in stderr


def test_predict_onnx_without_onnxruntime_or_with_a_bad_file_is_one_line(tmp_path, monkeypatch):
    image = tmp_path / "1.png"
    draw_digit(1).save(image)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not protobuf at all")
    for path in (bad, tmp_path / "missing.onnx"):
        code, stdout, stderr = run_cli(["predict", "--onnx", str(path), str(image)])
        assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1 and str(path) in stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, stderr = run_cli(["predict", "--onnx", str(bad), str(image)])
    assert code == 2 and "pip install 'mnistlab[export]'" in stderr


def test_help_states_the_normalization_and_no_command_loads_onnx():
    script = (
        "import sys\nfrom mnistlab import cli\n"
        "for argv in (['--help'], ['export', '--help'], ['predict', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print('loaded:', sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime', 'torch.onnx') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    help_text = " ".join(result.stdout.split())
    assert f"(pixels / 255 - {MEAN}) / {STD}" in help_text and "--onnx" in help_text
    assert result.stdout.strip().endswith("loaded: []")


# --- the README's example ---------------------------------------------------------------------


def test_the_readme_example_runs_and_agrees_with_pytorch(export_once, tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Use the model elsewhere") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    run_dir, path, _ = export_once("lenet5")
    file_name = re.search(r'InferenceSession\("([^"]+)"\)', code).group(1)
    shutil.copy(path, tmp_path / file_name)
    pixels = make_arrays(10, 50, seed=3).test_images
    np.save(tmp_path / "digits.npy", pixels)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    printed = [int(d) for d in re.findall(r"\d+", capsys.readouterr().out)]
    np.testing.assert_allclose(namespace["images"], normalize(torch.from_numpy(pixels)).numpy(), atol=1e-6)
    model, _ = load_model(run_dir)
    with torch.no_grad():
        assert printed == model(normalize(torch.from_numpy(pixels))).argmax(1).tolist()


def foreign_model(kind: str) -> bytes:
    """An ONNX file from elsewhere with mnistlab's names (`images` -> `logits`) but not its form."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    float_type = TensorProto.DOUBLE if kind == "float64" else TensorProto.FLOAT
    shapes = {"flat (N, 784)": ["N", 784], "batch fixed at 1": [1, 1, 28, 28], "4-D channels last": ["N", 28, 28, 1]}
    classes = 3 if kind == "3 classes" else 10
    weights = numpy_helper.from_array(
        np.full((784, classes), 0.01, np.float64 if kind == "float64" else np.float32), "weights"
    )
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["raw"]),
    ]
    initializers, extra_outputs = [weights], []
    last, out_type = "raw", float_type
    if kind == "NaN answers":
        initializers.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["raw", "nan"], ["scaled"]))
        last = "scaled"
    if kind == "int64 logits":
        nodes.append(helper.make_node("Cast", ["raw"], ["cast"], to=TensorProto.INT64))
        last, out_type = "cast", TensorProto.INT64
    if kind == "3 outputs":
        nodes += [helper.make_node("Identity", ["raw"], [name]) for name in ("second", "third")]
        extra_outputs = [
            helper.make_tensor_value_info(name, float_type, ["N", classes]) for name in ("second", "third")
        ]
    if kind == "flat (N, 784)":
        nodes[0] = helper.make_node("Identity", ["images"], ["flat"])
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "elsewhere",
        [helper.make_tensor_value_info("images", float_type, shapes.get(kind, ["N", 1, 28, 28]))],
        [helper.make_tensor_value_info("logits", out_type, ["N", classes]), *extra_outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    if kind == "3 classes":
        model.metadata_props.add(key="classes", value=json.dumps(["a", "b", "c"]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


FOREIGN = ["flat (N, 784)", "batch fixed at 1", "float64", "4-D channels last", "3 outputs", "int64 logits",
           "3 classes", "NaN answers"]  # fmt: skip


@pytest.mark.parametrize("kind", FOREIGN)
def test_predict_with_an_onnx_file_from_elsewhere_is_one_line_per_problem(kind, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(foreign_model(kind))
    images = []
    for digit in (1, 7):
        images.append(tmp_path / f"{digit}.png")
        draw_digit(digit).save(images[-1])
    code, stdout, stderr = run_cli(["predict", "--onnx", str(model), *map(str, images)])
    assert code == 2 and "Traceback" not in stderr and stdout == "", (stdout, stderr)
    lines = stderr.strip().splitlines()
    if kind == "NaN answers":  # a model that runs, and answers nothing: each image gets its line
        assert len(lines) == 2 and all("not a number" in line for line in lines), lines
    else:
        assert len(lines) == 1 and "not a model `mnistlab export` writes" in lines[0], lines
