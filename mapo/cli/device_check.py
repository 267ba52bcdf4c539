"""Checks of ``--device`` and ``--threads`` before anything is loaded, so a wrong value is one line."""

from __future__ import annotations

from mapo.core.errors import DeviceError


def check_device(name: str) -> str:
    """``name`` when this machine has that device (``cpu``, ``cuda``, ``cuda:N``, ``mps``); else :class:`DeviceError`."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N (or mps on a Mac)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name!r}: CUDA is not available on this machine (a CPU-only torch, or no "
                              "GPU visible); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise DeviceError(f"--device {name!r}: mapo runs on cpu, cuda or mps")
    return name


def check_threads(n: int) -> int:
    """``n`` when it is a usable CPU thread count (0 keeps torch's default); else :class:`DeviceError`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DeviceError(f"--threads must be 0 (torch's default) or a positive number of CPU threads, got {n!r}")
    return n
