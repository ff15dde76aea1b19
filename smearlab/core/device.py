"""Devices and the hardware a run used: ``resolve_device`` and a one-line description for reports."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Parameters
    ----------
    device : ``"auto"`` or None (CUDA when available, else the CPU), a device name such as
        ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` (case-insensitive), or a ``torch.device``.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        when a CUDA device is requested but CUDA is not available.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(str(device).lower())
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available here; "
                           "use device='auto' or 'cpu'")
    return dev


def cpu() -> str:
    """CPU model, core count and platform (the model from /proc/cpuinfo where available)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores ({platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()})")


def gpu() -> str | None:
    """Name and memory of the first CUDA device, or None when torch sees none."""
    try:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    except Exception:  # no torch, or a broken driver: report the CPU only
        return None


def describe(device: str = "cpu") -> str:
    """The hardware a run on ``device`` ("cpu", "cuda" or "auto") used: the GPU first when it ran on one.

    Parameters
    ----------
    device : the device the run used: ``"cpu"``, ``"auto"``, ``"cuda"`` or ``"cuda:N"``; for
        ``"auto"`` and CUDA devices the first CUDA device is described (when torch sees one) before
        the host CPU.

    Returns
    -------
    str
        one line, e.g. ``"<GPU> (<memory> GiB), CUDA <version>; host <CPU>"``, or the CPU alone.
    """
    g = gpu() if device in ("cuda", "auto") or str(device).startswith("cuda") else None
    return f"{g}; host {cpu()}" if g else cpu()
