"""Shifting and rotating 28x28 digits, and reading the study's curves of accuracy against them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnistlab.transform import (
    move_images,
    read_robustness,
    robustness_curves,
    rotate_images,
    shift_images,
)


def digits(n=3, dtype=torch.uint8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=generator)
    return images.to(dtype) if dtype == torch.uint8 else images.to(dtype) / 255


def shifted_by_hand(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(image)
    for y in range(28):
        for x in range(28):
            if 0 <= y + dy < 28 and 0 <= x + dx < 28:
                out[y + dy, x + dx] = image[y, x]
    return out


@pytest.mark.parametrize("dx,dy", [(0, 0), (3, 0), (0, -2), (-6, 5), (27, 1), (1, -27)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shift_moves_every_pixel_by_whole_pixels_and_fills_with_black(dx, dy, dtype):
    images = digits(dtype=dtype)
    moved = shift_images(images, dx, dy)
    assert moved.dtype == dtype and moved.shape == images.shape
    for image, result in zip(images.numpy(), moved.numpy()):
        assert np.array_equal(result, shifted_by_hand(image, dx, dy))


def test_shift_off_the_field_leaves_nothing_and_non_integers_are_refused():
    images = digits()
    assert not shift_images(images, 28, 0).any() and not shift_images(images, 0, -40).any()
    for bad in (1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number"):
            shift_images(images, bad, 0)


def test_rotation_by_zero_is_an_exact_copy():
    images = digits(dtype=torch.float32)
    rotated = rotate_images(images, 0)
    assert torch.equal(rotated, images) and rotated.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rotation_by_quarter_turns_matches_rot90_anticlockwise(dtype):
    images = digits(dtype=dtype)
    for angle, turns in ((90, 1), (-90, -1), (180, 2)):
        rotated = rotate_images(images, angle)
        assert rotated.dtype == dtype
        assert torch.allclose(rotated.float(), torch.rot90(images, turns, dims=(-2, -1)).float(), atol=1e-4)
    # Counter-clockwise as displayed: ink below the centre goes to the right.
    blob = torch.zeros(28, 28, dtype=torch.uint8)
    blob[22:25, 13:15] = 255
    ys, xs = torch.nonzero(rotate_images(blob, 90), as_tuple=True)
    assert ys.float().mean() == pytest.approx(13.5, abs=1) and xs.float().mean() > 20


def test_rotation_keeps_a_centred_digit_and_the_leading_dimensions():
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0  # a centred bar
    rotated = rotate_images(images, 30.0)
    assert rotated.shape == images.shape
    assert rotated.sum().item() == pytest.approx(images.sum().item(), rel=0.02)  # nothing lost over the edge
    assert rotated.min() >= 0 and rotated.max() <= 1
    assert not torch.equal(rotated, images)
    with pytest.raises(ValueError, match="finite"):
        rotate_images(images, float("nan"))


def test_move_rotates_then_shifts():
    images = digits()
    assert torch.equal(move_images(images, 2, -3, 20.0), shift_images(rotate_images(images, 20.0), 2, -3))
    assert torch.equal(move_images(images), images)


# --- the study's curves ----------------------------------------------------------------------


def results_with(robustness) -> dict:
    return {
        "variants": {"lenet5": {"label": "LeNet-5"}, "mlp": {"label": "MLP 500-150"}},
        "claims": {"robustness": robustness},
    }


def test_curves_are_read_with_the_study_labels():
    curves = robustness_curves(
        results_with(
            {
                "shift": {
                    "values": [0, 1, 2],
                    "accuracy": {
                        "lenet5": {"mean": [0.99, 0.98, 0.9], "std": [0.001, 0.002, 0.01]},
                        "mlp": [0.98, 0.9, 0.6],
                    },
                },
                "rotation": {"values": [0, 20, 40], "accuracy": {"lenet5": {"mean": [0.99, 0.95, 0.7]}}},
            }
        )
    )
    assert curves["shift"]["unit"] == "pixels" and curves["shift"]["values"] == [0, 1, 2]
    assert [(line["label"], line["mean"], line["std"]) for line in curves["shift"]["lines"]] == [
        ("LeNet-5", [0.99, 0.98, 0.9], [0.001, 0.002, 0.01]),
        ("MLP 500-150", [0.98, 0.9, 0.6], None),
    ]
    assert curves["rotation"]["unit"] == "degrees" and curves["rotation"]["lines"][0]["arm"] == "lenet5"


@pytest.mark.parametrize(
    "robustness",
    [
        None,
        [],
        {"shift": "x"},
        {"shift": {"values": [0, 1], "accuracy": {"lenet5": [0.9]}}},
        {"rotation": {"values": [0, 10], "accuracy": {"mlp": [0.9, float("nan")]}}},
        {"shift": {"values": [], "accuracy": {}}},
    ],
)
def test_no_or_malformed_curves_read_as_none(robustness):
    assert robustness_curves(results_with(robustness)) is None


def test_a_malformed_kind_or_arm_is_left_out():
    curves = robustness_curves(
        results_with(
            {
                "shift": {"values": [0, 1], "accuracy": {"lenet5": [0.9, 0.8], "mlp": [0.9]}},
                "rotation": {"values": "0..40", "accuracy": {}},
            }
        )
    )
    assert list(curves) == ["shift"] and [line["arm"] for line in curves["shift"]["lines"]] == ["lenet5"]


def test_read_robustness_of_a_file(tmp_path):
    path = tmp_path / "results.json"
    assert read_robustness(path) is None
    path.write_text("{not json")
    assert read_robustness(path) is None
    path.write_text(json.dumps({"variants": {}, "runs": []}))  # a study report without the experiment
    assert read_robustness(path) is None
    path.write_text(json.dumps(results_with({"shift": {"values": [0, 6], "accuracy": {"mlp": [0.98, 0.2]}}})))
    assert read_robustness(path)["shift"]["lines"][0]["label"] == "MLP 500-150"
