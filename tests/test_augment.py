"""Batched random affine augmentation (augment.py), checked against exact transforms."""

import pytest
import torch

from mnistlab.augment import affine, affine_draws, random_affine


def test_identity_affine_returns_input():
    x = torch.rand(5, 1, 28, 28)
    n = len(x)
    out = affine(x, torch.zeros(n), torch.zeros(n, 2), torch.ones(n))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_90_degree_rotation_equals_rot90():
    x = torch.rand(3, 1, 28, 28)
    out = affine(x, torch.full((3,), 90.0), torch.zeros(3, 2), torch.ones(3))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_shift_moves_pixels():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1
    out = affine(x, torch.zeros(1), torch.tensor([[2.0, -1.0]]), torch.ones(1))
    assert out[0, 0, 9, 12] == pytest.approx(1.0, abs=1e-5)


def test_random_affine_is_batched_seeded_and_bounded():
    x = torch.rand(64, 1, 28, 28)
    a = random_affine(x, affine_draws(64, torch.Generator().manual_seed(1)))
    b = random_affine(x, affine_draws(64, torch.Generator().manual_seed(1)))
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert not torch.allclose(a[0], x[0])
    # each image gets its own transform
    same = random_affine(x[:1].expand(8, -1, -1, -1).contiguous(), affine_draws(8, torch.Generator().manual_seed(2)))
    assert not torch.allclose(same[0], same[1])


def test_an_epochs_draws_made_at_once_are_those_made_batch_by_batch():
    # The engine draws an epoch's augmentation at its start; runs saved before drew it batch by batch.
    at_once, by_batch = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sizes = [64] * 30 + [17]
    whole = affine_draws(sum(sizes), at_once)
    assert torch.equal(whole, torch.cat([affine_draws(n, by_batch) for n in sizes]))
    assert torch.equal(at_once.get_state(), by_batch.get_state())  # and the generator goes on from the same place


def test_the_sampling_is_nearest_and_a_comparison_can_switch_it(monkeypatch):
    """benchmarks/augmentation_sampling.py compares the two samplings through `augment.SAMPLING`."""
    import mnistlab.augment

    images = torch.rand(2, 1, 8, 8)
    args = (torch.zeros(2), torch.full((2, 2), 0.5), torch.ones(2))  # half a pixel: the two samplings differ
    nearest = mnistlab.augment.affine(images, *args)
    assert mnistlab.augment.SAMPLING == "nearest"
    assert set(nearest.unique().tolist()) <= set(images.unique().tolist()) | {0.0}  # every pixel an input pixel
    monkeypatch.setattr(mnistlab.augment, "SAMPLING", "bilinear")
    assert not torch.equal(mnistlab.augment.affine(images, *args), nearest)
