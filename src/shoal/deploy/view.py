"""``shoal k8s view SOURCE DEST --plan JSON``: the repository a pod serves.

Runs in the pod's ``view`` init container, after ``shoal fetch`` (object storage) or on the
repository baked into the image. It builds ``DEST`` from symbolic links into ``SOURCE``, so it
copies nothing and takes milliseconds:

- each model of the plan gets a folder of its own (its public name), holding links to the
  files of the folder it is served ``from`` (its own, or another model's for a variant that
  is another model) and to the version folders it serves, and nothing else;
- its ``model.yaml`` is rewritten: ``version_policy: all`` (the plan chose the versions),
  ``rollout`` as the plan says (what stays in the process; removed otherwise), and the keys
  the plan ``drop``\\ s removed (``autoscaling`` when Kubernetes scales the pods), and
  ``autoscaling`` replaced by the entry's own when it has one (an override, for the
  server's own scaler when nothing in Kubernetes scales the pods);
- a graph gets a folder of its own too, holding links to every file of its folder (the
  server refuses a model folder that is itself a link out of the served root).

``DEST`` is built beside itself and renamed into place: a pod never sees half of it.

The plan (JSON, written by :func:`shoal.deploy.units.plan_units`)::

    {"models": {"fraud": {"from": "fraud", "versions": [3], "rollout": {...}},
                "ensemble": {"from": "ensemble", "graph": true}},
     "drop": ["autoscaling"]}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..repository.config import CONFIG_FILE
from ..repository.layout import check_model_name, version_dirs


class ViewError(ValueError):
    pass


def parse_plan(text: str) -> dict[str, Any]:
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ViewError(f"--plan is not JSON: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("models"), dict):
        raise ViewError('--plan must be {"models": {NAME: {"from": FOLDER, ...}}, ...}')
    return plan


def build_view(source: Path, dest: Path, plan: dict[str, Any]) -> Path:
    """Build ``dest`` (replacing what is there) from ``source`` as ``plan`` says."""
    source = source.resolve()
    if not source.is_dir():
        raise ViewError(f"{source} is not a folder (did the fetch run?)")
    dest = dest.absolute()
    staging = dest.with_name(dest.name + ".building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    drop = list(plan.get("drop", []))
    for public, entry in plan["models"].items():
        check_model_name(public)
        origin = source / check_model_name(str(entry.get("from", public)))
        if not origin.is_dir():
            raise ViewError(f"{public}: {origin} is not in the repository")
        target = staging / public
        if entry.get("graph"):
            _graph_view(origin, target)
            continue
        _model_view(origin, target, entry, drop)
    old = dest.with_name(dest.name + ".old")
    if dest.exists() or dest.is_symlink():
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    staging.rename(dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def _graph_view(origin: Path, target: Path) -> None:
    """A graph's folder: a real folder of links to its files. The server serves only model
    folders whose resolved parent is the served root, so the folder itself is not a link."""
    target.mkdir()
    for item in sorted(origin.iterdir()):
        (target / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    os.utime(target)


def _model_view(origin: Path, target: Path, entry: dict[str, Any], drop: list[str]) -> None:
    target.mkdir()
    dirs = version_dirs(origin)
    versioned = dirs != {1: origin}
    wanted = set(entry.get("versions") or []) if versioned else set()
    missing = sorted(v for v in wanted if v not in dirs)
    if missing:
        raise ViewError(f"{target.name}: {origin.name} has no version {missing[0]}")
    version_paths = {p.resolve() for p in dirs.values()} if versioned else set()
    for item in sorted(origin.iterdir()):
        if item.name == CONFIG_FILE:
            continue
        if item.resolve() in version_paths and int(item.name) not in wanted:
            continue
        (target / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    config_path = origin / CONFIG_FILE
    raw: dict[str, Any] = {}
    if config_path.is_file():
        loaded = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ViewError(f"{origin.name}/{CONFIG_FILE} must be a mapping")
        raw = loaded
    raw.pop("rollout", None)
    for key in drop:
        raw.pop(key, None)
    if versioned:
        raw["version_policy"] = "all"
    if entry.get("autoscaling") is not None:  # the override (a ShoalService's spec)
        raw["autoscaling"] = entry["autoscaling"]
    if entry.get("rollout"):
        raw["rollout"] = entry["rollout"]
    if raw or config_path.is_file():
        (target / CONFIG_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    os.utime(target)
