"""``model.yaml``: the optional per-model configuration file.

Example::

    runtime: sklearn                 # otherwise detected from the artifact
    parameters: {method: predict_proba}
    version_policy: {latest: 2}      # or: all, or {specific: [1, 3]}
    inputs:  [{name: features, datatype: FP64, shape: [-1, 4]}]
    outputs: [{name: predict_proba, datatype: FP64, shape: [-1, 3]}]
    max_batch_size: 32               # adaptive batching (off unless > 1)
    max_batch_delay_ms: 2
    max_inflight: 64                 # overload protection: 503 + Retry-After beyond it
    timeout: 5                       # seconds; 504 beyond it (a request header may override)
    workers: 2                       # run the model in 2 worker processes (GIL-bound models)
    url: http://triton:8000          # served by a remote V2 server (runtime: triton)
    rollout: {stable: "2", canary: {variant: "3", percent: 10}}   # docs/rollouts.md
    explainer: {method: auto, background: background.npy}        # docs/explanations.md
    logger: {url: http://collector:8000/events, mode: all}        # docs/observability.md
    autoscaling: {min_replicas: 0, max_replicas: 4, target_concurrency: 2}  # docs/autoscaling.md
    resources: {gpus: 1}             # what each replica takes (docs/autoscaling.md)
    command: ["java", "-jar", "model-server.jar"]   # runtime: process (docs/languages.md)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from ..datatypes import DATATYPES
from ..errors import LoadError
from ..explain.config import ExplainerConfig
from ..observe.payload.config import LoggerConfig
from ..rollout.spec import RolloutSpec
from ..serving.autoscale.config import AutoscalingConfig, ResourcesConfig
from ..types import TensorSpec

CONFIG_FILE = "model.yaml"
#: Files Shoal does not read, named like the ones it does (graph.spec.GRAPH_FILE is graph.yaml):
#: found beside a model, they fail its load instead of being ignored.
MISNAMED = {"model.yml": CONFIG_FILE, "graph.yml": "graph.yaml"}
POLICY_FORMS = "all, {latest: N} (N >= 1) or {specific: [1, 3]}"


#: The keys of ``runtime: process`` (docs/languages.md): with another runtime they are refused.
PROCESS_KEYS = ("command", "env", "ready_timeout", "protocol")
#: Environment variables Shoal sets for a process-runtime program; ``env`` may not.
PROCESS_ENV = ("PORT", "HOST", "SHOAL_MODEL_NAME", "SHOAL_MODEL_VERSION")


class TensorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}")
        return value

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class LatestPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latest: int = Field(ge=1)


class SpecificPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    specific: list[int] = Field(min_length=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    runtime: str | None = None
    model_class: str | None = Field(default=None, alias="class")
    parameters: dict[str, Any] = Field(default_factory=dict)
    version_policy: Literal["all"] | LatestPolicy | SpecificPolicy = LatestPolicy(latest=1)
    inputs: list[TensorConfig] = Field(default_factory=list)
    outputs: list[TensorConfig] = Field(default_factory=list)
    max_batch_size: int | None = Field(default=None, ge=0)
    """Adaptive batching: most rows merged into one predict; 0 or 1 turns it off. None: the
    server's --max-batch-size."""
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    """How long a batch may wait for more requests after its first; None: the server's default."""
    max_inflight: int | None = Field(default=None, ge=0)
    """Requests in flight (running or queued) before new ones get 503 / RESOURCE_EXHAUSTED;
    0: no limit; None: the server's --max-inflight."""
    timeout: float | None = Field(default=None, ge=0)
    """Seconds a request may take before it gets 504 / DEADLINE_EXCEEDED; 0: none; None: the
    server's --request-timeout."""
    workers: int | None = Field(default=None, ge=0)
    """Worker processes running this model's code (for GIL-bound models); 0: in the server
    process; None: the server's --workers."""
    rollout: RolloutSpec | None = None
    """A canary / shadow rollout to start with (see ``docs/rollouts.md``); changed live over
    ``/v2/models/{m}/rollout``."""
    url: str | None = None
    """A remote V2 server (Triton, another Shoal, ...) that serves this model: the ``triton``
    runtime forwards to it. Options (``protocol``, ``timeout``, ``retries``) go in
    ``parameters``."""
    explainer: ExplainerConfig | None = None
    """How ``:explain`` / ``/explain`` explain this model's predictions (SHAP; see
    ``docs/explanations.md``). Read with ``context={"folder": model_dir}`` (as
    :func:`read_config` does), its ``background`` file is resolved against the model's folder
    and must be there."""

    logger: LoggerConfig | bool | None = None
    """Payload logging of this model's requests and responses (CloudEvents; see
    ``docs/observability.md``); None: the server's ``--payload-log``, if any; false: none."""

    autoscaling: AutoscalingConfig | bool | None = None
    """Replicas (worker processes) that follow the load, down to zero (see
    ``docs/autoscaling.md``); None: the server's ``--autoscale``; false: a fixed count."""
    resources: ResourcesConfig | None = None
    """What each replica takes: ``gpus`` (and ``gpu_share``) on one machine; ``cpu`` and
    ``memory`` requests when rendered for Kubernetes."""

    command: list[str] | None = Field(default=None, min_length=1)
    """``runtime: process``: the program (and its arguments) that serves this model over V2,
    started in the version folder with ``$PORT`` set (see ``docs/languages.md``)."""
    env: dict[str, str] = Field(default_factory=dict)
    """``runtime: process``: extra environment variables for ``command``."""
    ready_timeout: float | None = Field(default=None, gt=0)
    """``runtime: process``: seconds ``command`` may take to become ready (default 60)."""
    protocol: Literal["v2-rest", "v2-grpc"] | None = None
    """``runtime: process``: what ``command`` serves on ``$PORT`` (default ``v2-rest``)."""

    @field_validator("version_policy", mode="wrap")
    @classmethod
    def _policy_forms(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One line that shows the accepted forms, not one error per member of the union."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"must be {POLICY_FORMS}, not {value!r}") from None

    @field_validator("command", mode="before")
    @classmethod
    def _command_is_a_list(cls, value: Any) -> Any:
        """A string is not split into arguments (no shell): say so rather than "a list"."""
        if isinstance(value, str):
            raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError, not a TypeError
                f"must be a list of the program and its arguments, e.g. {value.split()!r} "
                "(a string is not split into arguments)"
            )
        if isinstance(value, list) and value and value[0] == "":
            raise ValueError("its first item, the program, is empty")
        return value

    @model_validator(mode="after")
    def _process_keys(self) -> ModelConfig:
        """``command`` means ``runtime: process``; its keys anywhere else fail the load
        naming them: a misplaced setting is never silently ignored."""
        given = [key for key in PROCESS_KEYS if key in self.model_fields_set]
        if self.command is not None and self.url is not None:
            raise ValueError("url and command: a model is served by a remote server (url) "
                             "or by a program Shoal starts (command), not both")
        if self.command is not None and self.runtime is None:
            self.runtime = "process"
        if self.runtime == "process":
            if self.command is None:
                raise ValueError(
                    "runtime: process needs command: the program (and its arguments) that "
                    'serves the model, e.g. command: ["java", "-jar", "model-server.jar"]'
                )
            reserved = [key for key in PROCESS_ENV if key in self.env]
            if reserved:
                raise ValueError(f"env.{reserved[0]}: Shoal sets {', '.join(PROCESS_ENV)} "
                                 "for the program itself")
        elif given:
            runtime = self.runtime or ("triton, from url" if self.url else "detected from the artifact")
            raise ValueError(
                f"{', '.join(given)}: {'a setting' if len(given) == 1 else 'settings'} of "
                f"runtime: process (a program Shoal starts, named by command), but this "
                f"model's runtime is {runtime}"
                + ("; a remote's protocol goes in parameters.protocol (http or grpc)"
                   if "protocol" in given and self.url is not None else "")
            )
        return self

    def select_versions(self, available: list[int]) -> list[int]:
        """The versions to serve, as TF Serving's and Triton's version policies choose."""
        ordered = sorted(available)
        policy = self.version_policy
        if policy == "all":
            return ordered
        if isinstance(policy, LatestPolicy):
            return ordered[-policy.latest :]
        return [v for v in ordered if v in set(policy.specific)]


def read_config(model_dir: Path) -> ModelConfig:
    check_misnamed(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    import yaml  # only for a folder with a model.yaml (not at startup otherwise)

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LoadError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LoadError(f"{path.name} must be a mapping")
    try:
        # The folder resolves (and checks) files model.yaml names: explainer.background.
        return ModelConfig.model_validate(raw, context={"folder": model_dir})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_field_path(e['loc'])) or 'model.yaml'}: {_message(e)}"
            for e in _meant(exc.errors())
        )
        raise LoadError(f"{path.name} is invalid: {problems}") from None


def check_misnamed(model_dir: Path) -> None:
    """``model.yml`` would be silently ignored (Shoal reads ``model.yaml``): say so."""
    for wrong, right in MISNAMED.items():
        if not (model_dir / wrong).is_file():
            continue
        if (model_dir / right).is_file():
            raise LoadError(
                f"{model_dir.name}/ has both {wrong} and {right}; Shoal reads only {right}: "
                f"merge {wrong} into it and delete {wrong}"
            )
        raise LoadError(f"{model_dir.name}/ has {wrong}, but Shoal reads {right}: rename it to {right}")


#: Parts pydantic adds to an error's location for the member of a union or a validator:
#: ``function-after[_consistent(), AutoscalingConfig]``, ``LoggerConfig``, ``bool``.
_NOT_A_FIELD = re.compile(r"^(function-\w+\[.*\]|[A-Z]\w*|bool|str|int|float)$")


def _field_path(loc: tuple[Any, ...]) -> list[str]:
    return [str(p) for p in loc if not (isinstance(p, str) and _NOT_A_FIELD.match(p))]


def _meant(errors: list[Any]) -> list[Any]:
    """For a ``block | bool`` setting given a mapping, the mapping's errors only: "should be
    a valid boolean" beside "unknown key" only hides what is wrong."""
    fields_with_other_errors = {
        tuple(_field_path(e["loc"])[:1]) for e in errors if e["type"] != "bool_type"
    }
    return [
        e for e in errors
        if not (e["type"] == "bool_type" and isinstance(e.get("input"), dict)
                and tuple(_field_path(e["loc"])[:1]) in fields_with_other_errors)
    ] or errors


def _message(error: Any) -> str:
    """pydantic's message, without the "Value error, " it puts before a validator's own."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return str(error["msg"])
