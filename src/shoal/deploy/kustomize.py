"""Rendered objects as one multi-document YAML, or as a kustomize base (one file per object
and a ``kustomization.yaml`` listing them), which ``kubectl kustomize DIR`` builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order they were built, no anchors (``&id001``): every object
    stands on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100000)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One YAML stream, documents separated by ``---``."""
    return "".join(f"---\n{dump(obj)}" for obj in objects)


def file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_kustomize(objects: list[dict[str, Any]], directory: str | Path) -> list[Path]:
    """Write ``directory/kustomization.yaml`` and one file per object; returns the paths
    written (the kustomization first). Files of an earlier render that this one no longer
    has are left alone (and no longer listed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    written = []
    for obj in objects:
        name = file_name(obj)
        if name in names:
            raise ValueError(f"two objects would be written to {name}")
        names.append(name)
        path = folder / name
        path.write_text(dump(obj))
        written.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": names}
    (folder / KUSTOMIZATION).write_text(dump(kustomization))
    return [folder / KUSTOMIZATION, *written]
