"""The seams of the house: what the inference side loads, and what the training core does not reach into."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "mnistlab"
TRAINING = ("mnistlab.engine", "mnistlab.splits", "mnistlab.study", "mnistlab.claims", "mnistlab.fast.stacked")


def test_inference_loads_no_training_code(tmp_path):
    """predict, the inside view, the export and the page's server (with a checkpoint loaded) need the models and
    the preprocessing only."""
    script = f"""
import sys, torch
from mnistlab.models import create_model
from mnistlab.checkpoint import save_checkpoint
save_checkpoint({str(tmp_path / "checkpoint.pt")!r}, model_name="lenet5-bn", model_kwargs={{}}, config={{}}, epoch=1,
                metrics=[], model_state=create_model("lenet5-bn").state_dict())
import mnistlab.predict, mnistlab.inside, mnistlab.onnx_export, mnistlab.server
import mnistlab.cli.predict, mnistlab.cli.serve, mnistlab.cli.export
from mnistlab.checkpoint import load_model
from mnistlab.inputs import predict_logits
model, _ = load_model({str(tmp_path)!r})
predict_logits(model, torch.zeros(2, 28, 28, dtype=torch.uint8))
print(" ".join(sorted(sys.modules)))
"""
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "mnistlab.server" in loaded and "mnistlab.fast.layers" in loaded  # what it must load, it did
    assert not [name for name in TRAINING if name in loaded]


def test_the_core_reaches_the_speed_wing_through_its_door_alone():
    """engine.py imports `mnistlab.fast` (prepare, run_steps) and none of the wing's modules."""
    tree = ast.parse((SRC / "engine.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not [name for name in imported if name and name.startswith("mnistlab.fast")]
    uses = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "fast"
    }
    assert uses <= {"prepare", "run_steps", "RunSteps"}
