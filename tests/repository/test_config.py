"""model.yaml parsing and version policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import LoadError
from shoal.repository.config import (
    LatestPolicy,
    ModelConfig,
    SpecificPolicy,
    read_config,
)
from shoal.types import TensorSpec


def write(tmp_path: Path, text: str | bytes) -> Path:
    target = tmp_path / "model.yaml"
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)
    return tmp_path


def load_error(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(LoadError) as info:
        read_config(write(tmp_path, text))
    return str(info.value)


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = read_config(tmp_path)
    assert config.runtime is None and config.model_class is None
    assert config.parameters == {} and config.inputs == [] and config.outputs == []
    assert config.version_policy == LatestPolicy(latest=1)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert read_config(write(tmp_path, "")) == ModelConfig()


def test_full_config(tmp_path: Path) -> None:
    config = read_config(
        write(
            tmp_path,
            """
runtime: sklearn
class: mymodule.MyModel
parameters: {method: predict_proba, threads: 2}
version_policy: {latest: 2}
inputs:  [{name: features, datatype: FP64, shape: [-1, 4]}]
outputs:
  - {name: predict_proba, datatype: FP64, shape: [-1, 3]}
""",
        )
    )
    assert config.runtime == "sklearn"
    assert config.model_class == "mymodule.MyModel"
    assert config.parameters == {"method": "predict_proba", "threads": 2}
    assert config.version_policy == LatestPolicy(latest=2)
    assert [t.spec() for t in config.inputs] == [TensorSpec("features", "FP64", (-1, 4))]
    assert config.outputs[0].spec() == TensorSpec("predict_proba", "FP64", (-1, 3))


@pytest.mark.parametrize(
    "policy,available,expected",
    [
        ("{latest: 1}", [3, 1, 2], [3]),
        ("{latest: 2}", [3, 1, 10, 2], [3, 10]),
        ("{latest: 5}", [2, 1], [1, 2]),
        ("all", [3, 1, 2], [1, 2, 3]),
        ("{specific: [1, 3]}", [1, 2, 3], [1, 3]),
        ("{specific: [4]}", [1, 2, 3], []),
    ],
)
def test_version_policies(tmp_path: Path, policy: str, available, expected) -> None:
    config = read_config(write(tmp_path, f"version_policy: {policy}\n"))
    assert config.select_versions(available) == expected


def test_default_policy_serves_the_newest_version() -> None:
    assert ModelConfig().select_versions([1, 7, 3]) == [7]
    assert ModelConfig().select_versions([]) == []


def test_specific_policy_type(tmp_path: Path) -> None:
    config = read_config(write(tmp_path, "version_policy: {specific: [2]}"))
    assert config.version_policy == SpecificPolicy(specific=[2])


def test_invalid_yaml(tmp_path: Path) -> None:
    message = load_error(tmp_path, "runtime: [sklearn\n")
    assert "model.yaml is not valid YAML" in message


def test_not_utf8(tmp_path: Path) -> None:
    assert "not valid YAML" in load_error(tmp_path, b"runtime: \xff\xfe\n")


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "model.yaml must be a mapping" in load_error(tmp_path, "- a\n- b\n")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "runtime: sklearn\nruntme: x\n")
    assert "model.yaml is invalid" in message and "runtme" in message


def test_unknown_tensor_key(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, "inputs: [{name: x, datatype: FP32, shape: [1], dtype: float}]\n"
    )
    assert "inputs.0.dtype" in message


def test_bad_datatype(tmp_path: Path) -> None:
    message = load_error(tmp_path, "outputs: [{name: y, datatype: FLOAT32, shape: [1]}]\n")
    assert "outputs.0.datatype" in message and "unknown datatype 'FLOAT32'" in message


def test_missing_tensor_fields(tmp_path: Path) -> None:
    message = load_error(tmp_path, "inputs: [{name: x}]\n")
    assert "inputs.0.datatype" in message and "inputs.0.shape" in message


@pytest.mark.parametrize(
    "policy,fragment",
    [
        ("{latest: 0}", "latest"),
        ("{specific: []}", "specific"),
        ("newest", "version_policy"),
        ("{latest: 1, specific: [1]}", "version_policy"),
    ],
)
def test_bad_version_policy(tmp_path: Path, policy: str, fragment: str) -> None:
    message = load_error(tmp_path, f"version_policy: {policy}\n")
    assert "model.yaml is invalid" in message and fragment in message


@pytest.mark.parametrize("policy", ["latest", "{latest: 0}", "{specific: []}", "[1, 2]"])
def test_a_bad_version_policy_is_one_line_showing_the_accepted_forms(tmp_path: Path, policy: str) -> None:
    message = load_error(tmp_path, f"version_policy: {policy}\n")
    assert message.startswith(
        "model.yaml is invalid: version_policy: must be all, {latest: N} (N >= 1) or "
        "{specific: [1, 3]}, not "
    )
    assert message.count("version_policy") == 1 and "\n" not in message


@pytest.mark.parametrize(("wrong", "right"), [("model.yml", "model.yaml"), ("graph.yml", "graph.yaml")])
def test_a_misnamed_file_is_reported_not_ignored(tmp_path: Path, wrong: str, right: str) -> None:
    (tmp_path / wrong).write_text("parameters: {method: predict_proba}\n")
    with pytest.raises(LoadError) as info:
        read_config(tmp_path)
    assert str(info.value) == f"{tmp_path.name}/ has {wrong}, but Shoal reads {right}: rename it to {right}"
    (tmp_path / right).write_text("runtime: sklearn\n")
    with pytest.raises(LoadError, match=f"has both {wrong} and {right}; Shoal reads only {right}"):
        read_config(tmp_path)


def test_a_rollout_section_is_read_and_checked(tmp_path: Path) -> None:
    config = read_config(write(tmp_path, """
rollout:
  stable: "1"
  canary: {variant: "2", analysis: {steps: [10, 50], interval: 30s, max_error_rate: 0.05}}
  shadow: {variant: iris-xgb, percent: 20}
"""))
    assert config.rollout is not None
    assert config.rollout.canary is not None and config.rollout.canary.analysis is not None
    assert config.rollout.canary.analysis.interval == 30.0
    assert config.rollout.shadow is not None and config.rollout.shadow.percent == 20.0


@pytest.mark.parametrize("section, named", [
    ('rollout: {canary: {variant: "2", percnt: 10}}', "rollout.canary.percnt"),
    ('rollout: {canary: {variant: "2", percent: 150}}', "rollout.canary.percent"),
    ('rollout: {shadow: {variant: "2", percent: "all"}}', "rollout.shadow.percent"),
    ('rollout: {canary: {variant: "2", analysis: {steps: [50, 10], interval: 1}}}',
     "rollout.canary.analysis.steps"),
    ('rollout: {stabel: "1"}', "rollout.stabel"),
])
def test_a_bad_rollout_section_fails_the_load_naming_the_key(
    tmp_path: Path, section: str, named: str
) -> None:
    assert named in load_error(tmp_path, section + "\n")
