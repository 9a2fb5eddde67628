"""``parameters.device`` of the runtimes that run PyTorch (TorchScript / torch.export
programs, Hugging Face models): checked at load, so a model asking for a GPU this machine or
this PyTorch build cannot give fails its load saying which, instead of failing every request."""

from __future__ import annotations

import torch

from ..errors import LoadError


def torch_device(wanted: str, runs: str) -> torch.device:
    """The device ``wanted`` names (``cpu``, ``cuda``, ``cuda:N``), or a LoadError saying why
    it cannot be used; ``runs`` names what runs there ("PyTorch models")."""
    try:
        device = torch.device(wanted)
    except RuntimeError:
        raise LoadError(f"parameters.device {wanted!r} is not a device (use cpu or cuda[:N])") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError(
                f"parameters.device is {wanted!r} but CUDA is not available to this PyTorch "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise LoadError(
                f"parameters.device is {wanted!r} but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    elif device.type != "cpu":
        raise LoadError(f"parameters.device {wanted!r}: Shoal runs {runs} on cpu or cuda")
    return device
