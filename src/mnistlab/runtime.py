"""Where and how a command computes: the device, torch's CPU threads, synchronizing before a
timing, CPU seconds, and bf16 autocast."""

from __future__ import annotations

import contextlib
import resource

import torch

from mnistlab.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to this torch build")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: no MPS device is available")
    return torch.device(name)


MAX_THREADS = 1024  # a bound, so that a typo cannot ask torch for a million threads


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count from a `--threads` flag; None keeps torch's choice."""
    if threads is None:
        return
    if threads <= 0:
        raise UserError(f"threads must be positive, got {threads}")
    if threads > MAX_THREADS:
        raise UserError(f"threads must be at most {MAX_THREADS}, got {threads}")
    torch.set_num_threads(threads)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (a process pool's workers, once it has closed).

    Unlike wall time it hardly moves with what else the machine is running, so it says what a
    part of a study costs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `enabled` (`--amp`); nothing otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()
