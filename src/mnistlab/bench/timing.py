"""The bench's clock: a call timed with the device synchronized, medians with their range, a yardstick."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from mnistlab.runtime import synchronize


def timed_once(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def matmul_gflops(device: torch.device, size: int = 512, repeats: int = 50) -> float:
    """A yardstick for the machine's state: float32 matrix products per second. Shared machines drift."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b  # warm-up
    seconds = timed_once(lambda: [a @ b for _ in range(repeats)], device)
    return repeats * 2 * size**3 / seconds / 1e9
