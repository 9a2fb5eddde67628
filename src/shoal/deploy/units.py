"""How a repository's rollout becomes separately deployable units.

A pod serves the whole repository (as ``shoal serve`` does). A rollout moves the traffic of
*one* model between variants; where Kubernetes can move that traffic, each variant becomes a
unit of its own:

- ``--mode standard`` without ``--istio``: one unit; the rollout stays inside the Shoal
  process, exactly as on one machine (``docs/rollouts.md``).
- ``--mode knative``: the canary becomes a Knative revision of its own (the traffic block
  splits between the stable and the canary revision); a shadow stays in the process of each
  revision (Knative has no mirroring).
- ``--mode standard --istio``: the stable, the canary and a local shadow each become a
  Deployment with a ``version`` label (a DestinationRule subset); the VirtualService splits
  and mirrors between them. A remote shadow (``http://host:port``) is mirrored to that host.

Each unit serves the rolled-out model's public name from *its* variant only (a version of
the model, or another model's folder served under the public name) and every other model as
the repository has it. The unit's view of the repository (which folders, which versions,
the ``model.yaml`` without the parts Kubernetes took over) is a *plan*, built in the pod by
``shoal k8s view`` (:mod:`shoal.deploy.view`) before ``shoal serve`` starts.

The versions are pinned when rendering: a pod serves what the repository held then, never a
version uploaded later (render again to roll that out).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..rollout.spec import RolloutSpec, Variant, parse_spec, parse_variant
from .spec import DeploySpec, ModelInfo, RenderError, read_repository, slug


class DeployWarning(UserWarning):
    """Something of the repository's settings that the rendered objects cannot express."""


@dataclass
class Unit:
    """One deployable unit: a Deployment (standard) or a Knative revision."""

    role: str  # "stable", "canary" or "shadow"
    version: str  # its ``version`` label: v3, iris-xgb-v1, or "stable" without a rollout
    plan: dict[str, Any]


@dataclass
class Layout:
    units: list[Unit]
    #: The model whose traffic Kubernetes moves (None: no split or mirror by Kubernetes).
    model: str | None = None
    canary_percent: float | None = None
    shadow_percent: float | None = None
    #: A remote shadow's ``http://host:port`` (mirrored by Istio to that host).
    shadow_url: str | None = None
    notes: list[str] = field(default_factory=list)

    def unit(self, role: str) -> Unit | None:
        return next((u for u in self.units if u.role == role), None)


def plan_units(spec: DeploySpec) -> Layout:
    """The units for ``spec`` and how traffic moves between them."""
    rolled = _rollouts(spec)
    platform_canary = spec.mode == "knative" or spec.istio
    platform_shadow = spec.istio
    drop = ["autoscaling"] if spec.platform_scales else []

    moved = {name: r for name, r in rolled.items()
             if (r.canary is not None and platform_canary)
             or (r.shadow is not None and platform_shadow) or r.stable is not None}
    if not (spec.mode == "knative" or spec.istio):
        moved = {}
    if len(moved) > 1:
        raise RenderError(
            f"models {', '.join(sorted(moved))} each have a rollout: Kubernetes splits the "
            "traffic of a whole pod, so render one of them per deployment (--model NAME)"
        )

    base = {m.name: _entry(m, rolled.get(m.name)) for m in spec.models}
    if not moved:
        return Layout([Unit("stable", _default_label(spec), _plan(base, drop, _scaling(spec)))])

    (name, rollout), = moved.items()
    model = next(m for m in spec.models if m.name == name)
    layout = Layout([], model=name)
    stable_text = rollout.stable or str(_newest(model))
    stable = _resolve(spec, model, stable_text, "stable")

    canary = None
    if rollout.canary is not None and platform_canary:
        canary = _resolve(spec, model, rollout.canary.variant, "canary.variant")
        layout.canary_percent = rollout.canary.start_percent()
        if rollout.canary.analysis is not None:
            _warn(layout, f"{name}: rollout.canary.analysis is not rendered: the canary gets "
                          f"its first step, {layout.canary_percent:g}%; step it up by "
                          "rendering again (or use the ShoalService operator, Flagger or Argo "
                          "Rollouts)")
        if rollout.canary.sticky is not None:
            _warn(layout, f"{name}: rollout.canary.sticky is not rendered: Kubernetes splits "
                          "each request at random")

    shadow_in_process = None
    shadow_unit = None
    if rollout.shadow is not None:
        if platform_shadow:
            layout.shadow_percent = rollout.shadow.percent
            variant = parse_variant(rollout.shadow.variant, name, "shadow.variant", True)
            if variant.url is not None:
                if variant.text.rstrip("/") != variant.url or variant.model != name:
                    raise RenderError(
                        f"{name}: rollout.shadow.variant {variant.text!r}: Istio mirrors "
                        "requests unchanged, so a remote shadow must be http://host:port "
                        "(the same model name there), without a path"
                    )
                layout.shadow_url = variant.url
            else:
                shadow_unit = _resolve(spec, model, rollout.shadow.variant, "shadow.variant")
        else:
            shadow_in_process = rollout.shadow

    def unit(role: str, source: tuple[str, int | None, str]) -> Unit:
        entries = dict(base)
        entries[name] = _variant_entry(spec, model, source, shadow_in_process)
        return Unit(role, source[2], _plan(entries, drop, _scaling(spec)))

    layout.units.append(unit("stable", stable))
    if canary is not None:
        if canary[2] == stable[2]:
            raise RenderError(f"{name}: rollout.canary.variant is the stable variant")
        layout.units.append(unit("canary", canary))
    if shadow_unit is not None:
        if shadow_unit[2] in (stable[2], canary and canary[2]):
            raise RenderError(f"{name}: rollout.shadow.variant is the stable or canary variant")
        layout.units.append(unit("shadow", shadow_unit))
    return layout


def _rollouts(spec: DeploySpec) -> dict[str, RolloutSpec]:
    if spec.rollout_override is not None:
        data = dict(spec.rollout_override)
        target = data.pop("model", None) or _primary_name(spec)
        if target is None or target not in {m.name for m in spec.models}:
            raise RenderError(f"rollout.model {target!r}: name a model of the repository")
        try:
            return {target: parse_spec(data)} if data else {}
        except InvalidInput as exc:
            raise RenderError(str(exc)) from None
    return {m.name: m.config.rollout for m in spec.models if m.config.rollout is not None}


def _primary_name(spec: DeploySpec) -> str | None:
    models = [m for m in spec.models if not m.graph]
    for m in models:
        if m.name == spec.name:
            return m.name
    return models[0].name if len(models) == 1 else None


def _default_label(spec: DeploySpec) -> str:
    primary = _primary_name(spec)
    if primary is None:
        return "stable"
    model = next(m for m in spec.models if m.name == primary)
    rollout = model.config.rollout
    if rollout is not None and rollout.stable is not None:  # unversioned requests go there
        return slug(rollout.stable)
    return f"v{model.served[-1]}" if model.served else "stable"


def _newest(model: ModelInfo) -> int:
    if not model.served:
        raise RenderError(f"{model.name}: its version policy serves no version")
    return model.served[-1]


def _resolve(spec: DeploySpec, model: ModelInfo, text: str, field_name: str
             ) -> tuple[str, int | None, str]:
    """A variant as (folder to serve it from, version there, version label)."""
    try:
        variant: Variant = parse_variant(text, model.name, f"rollout.{field_name}")
    except InvalidInput as exc:
        raise RenderError(f"{model.name}: {exc}") from None
    if variant.model == model.name:
        version = int(variant.version) if variant.version else _newest(model)
        if version not in model.versions:
            raise RenderError(f"{model.name}: rollout.{field_name} {text!r}: the model has no "
                              f"version {version} (it has {model.versions})")
        return model.name, (version if model.versioned else None), f"v{version}"
    other = next((m for m in spec.models if m.name == variant.model), None)
    if other is None:
        found = read_repository(model.folder.parent, [variant.model]) \
            if (model.folder.parent / variant.model).is_dir() else []
        if not found:
            raise RenderError(f"{model.name}: rollout.{field_name} {text!r}: the repository "
                              f"has no model {variant.model!r}")
        other = found[0]
    if other.graph:
        raise RenderError(f"{model.name}: rollout.{field_name} {text!r} is a graph: Kubernetes "
                          "can only split between models")
    version = int(variant.version) if variant.version else _newest(other)
    if version not in other.versions:
        raise RenderError(f"{model.name}: rollout.{field_name} {text!r}: model "
                          f"{other.name!r} has no version {version}")
    return other.name, (version if other.versioned else None), slug(f"{other.name}:{version}")


def _entry(model: ModelInfo, rollout: RolloutSpec | None) -> dict[str, Any]:
    if model.graph:
        return {"from": model.name, "graph": True}
    entry: dict[str, Any] = {"from": model.name}
    if model.versioned:
        entry["versions"] = list(model.served)
    if rollout is not None:
        entry["rollout"] = rollout.to_json()
    return entry


def _variant_entry(spec: DeploySpec, model: ModelInfo, source: tuple[str, int | None, str],
                   shadow: Any) -> dict[str, Any]:
    """The rolled-out model's entry in a unit: served from the unit's variant only, with a
    shadow kept in the process when Kubernetes cannot mirror."""
    folder, version, _ = source
    entry: dict[str, Any] = {"from": folder}
    if version is not None:
        entry["versions"] = [version]
    if shadow is not None:
        variant = parse_variant(shadow.variant, model.name, "shadow.variant", True)
        if variant.url is None and variant.model == model.name:
            if folder != model.name or not model.versioned:
                raise RenderError(f"{model.name}: a shadow that is a version of the model, with "
                                  "a canary that is another model, needs --istio")
            shadow_version = int(variant.version or _newest(model))
            if shadow_version not in model.versions:
                raise RenderError(f"{model.name}: rollout.shadow.variant {shadow.variant!r}: the "
                                  f"model has no version {shadow_version}")
            entry["versions"] = sorted({*entry["versions"], shadow_version})
        elif variant.url is None and variant.model not in {m.name for m in spec.models}:
            raise RenderError(f"{model.name}: rollout.shadow.variant {shadow.variant!r}: that "
                              "model is not deployed (see --model)")
        entry["rollout"] = {"stable": str(version or 1),
                            "shadow": shadow.model_dump(mode="json", exclude_none=True)}
    return entry


def _scaling(spec: DeploySpec) -> dict[str, Any] | None:
    """The ``autoscaling`` override for the server's own scaler: when nothing in Kubernetes
    scales the pods, the pod's models take it (the view writes it into their model.yaml)."""
    if spec.autoscaling_override is None or spec.platform_scales:
        return None
    spec.autoscaling()  # a RenderError for an invalid one
    return dict(spec.autoscaling_override)


def _plan(entries: dict[str, dict[str, Any]], drop: list[str],
          scaling: dict[str, Any] | None = None) -> dict[str, Any]:
    models = {k: dict(entries[k]) for k in sorted(entries)}
    if scaling is not None:
        for entry in models.values():
            if not entry.get("graph"):
                entry["autoscaling"] = scaling
    plan: dict[str, Any] = {"models": models}
    if drop:
        plan["drop"] = list(drop)
    return plan


def _warn(layout: Layout, message: str) -> None:
    layout.notes.append(message)
    warnings.warn(message, DeployWarning, stacklevel=3)
