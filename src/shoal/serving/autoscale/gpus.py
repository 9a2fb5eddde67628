"""Which GPUs a replica gets: one or more devices of its own, spread over the visible ones.

The devices are ``--gpus 0,1`` when given, else found with NVML (``pynvml``, when installed)
or ``nvidia-smi``, else none. A model asking for ``resources: {gpus: N}`` with N above the
devices there are fails to load saying so. Each replica takes N devices, the least used first;
a device holds at most ``gpu_share`` replicas (1 by default: a device per replica), so the
scaler never puts a second replica on a busy device unless the model allows it. A replica
sees only its own devices: ``CUDA_VISIBLE_DEVICES`` is set in its process before any model
code runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter

from ...errors import LoadError
from ...observe import logging as log


def discover() -> list[str]:
    """The GPUs this server may use: those ``CUDA_VISIBLE_DEVICES`` names when it is set (a
    batch scheduler's allotment), else every device NVML or nvidia-smi lists (PCI order)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, or no driver: try nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.event("gpu_discovery_failed", reason=f"nvidia-smi: {exc}")
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def parse_devices(text: str) -> list[str]:
    """``--gpus 0,1`` (or ``none``) as a list of device names."""
    if text.strip().lower() in ("", "none"):
        return []
    devices = [part.strip() for part in text.split(",")]
    if any(not d for d in devices) or len(set(devices)) != len(devices):
        raise ValueError(f"--gpus takes distinct device indices like 0,1, not {text!r}")
    return devices


class GpuAllocator:
    """Hands out devices to replicas. ``devices`` None: found on first use (so a server
    without GPU models never runs nvidia-smi); ``part`` (index, count): this server process
    takes every count-th device from index (``--http-workers``)."""

    def __init__(self, devices: list[str] | None, part: tuple[int, int] = (0, 1)) -> None:
        self._given = None if devices is None else list(devices)
        self._part = part
        self._devices: list[str] | None = None
        #: device -> replicas holding it
        self._holders: Counter[str] = Counter()
        #: device -> the ``gpu_share`` of each replica holding it: a device is shared only
        #: when every replica on it allows as many neighbours.
        self._shares: dict[str, list[int]] = {}

    @property
    def devices(self) -> list[str]:
        if self._devices is None:
            found = discover() if self._given is None else self._given
            index, count = self._part
            self._devices = found[index % count::count]
        return self._devices

    def check(self, model: str, gpus: int) -> None:
        """Whether a model asking for ``gpus`` per replica can run here at all."""
        if gpus and gpus > len(self.devices):
            have = ", ".join(self.devices) if self.devices else "none"
            index, count = self._part
            shared = (f"; with --http-workers {count}, server process {index} takes every "
                      f"{count}th device: give each process enough GPUs, or serve GPU models "
                      "with one server process") if count > 1 else ""
            raise LoadError(
                f"model {model!r} asks for {gpus} GPU(s) per replica, but this server has "
                f"{len(self.devices)} (devices: {have}; see --gpus){shared}"
            )

    def take(self, gpus: int, share: int) -> list[str] | None:
        """``gpus`` devices for one replica, or None when every device that could take it is
        already held by ``share`` replicas."""
        if gpus == 0:
            return []
        free = [d for d in self.devices
                if self._holders[d] < min([share, *self._shares.get(d, [])])]
        if len(free) < gpus:
            return None
        chosen = sorted(free, key=lambda d: (self._holders[d], self.devices.index(d)))[:gpus]
        for device in chosen:
            self._holders[device] += 1
            self._shares.setdefault(device, []).append(share)
        return chosen

    def give_back(self, devices: list[str], share: int) -> None:
        for device in devices:
            self._holders[device] -= 1
            shares = self._shares.get(device, [])
            if share in shares:
                shares.remove(share)
            if self._holders[device] <= 0:
                del self._holders[device]
                self._shares.pop(device, None)

    def usage(self) -> dict[str, int]:
        return {d: self._holders[d] for d in self.devices}
