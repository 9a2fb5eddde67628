"""docs/kubernetes.md's example outputs are what the renderer prints for its example
repository (the ``model.yaml`` block marked ``k8s-example-model``, versions 2 and 3)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.deploy import to_yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"
BLOCK = re.compile(r"<!-- (k8s-[a-z-]+)(?:: ([^|]*)\|([^>]*))? -->\n```yaml\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str, str, str]]:
    return [(m.group(1), (m.group(2) or "").strip(), (m.group(3) or "").strip(), m.group(4))
            for m in BLOCK.finditer(DOC.read_text())]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doc") / "models"
    (model,) = [text for kind, _, _, text in blocks() if kind == "k8s-example-model"]
    for version in ("2", "3"):
        (root / "fraud" / version).mkdir(parents=True)
        (root / "fraud" / version / "model.joblib").write_bytes(b"")
    (root / "fraud" / "model.yaml").write_text(model)
    return root


RENDERED = [b for b in blocks() if b[0] == "k8s-render"]


@pytest.mark.parametrize(("kinds", "args", "text"), [b[1:] for b in RENDERED],
                         ids=[b[2] for b in RENDERED])
def test_doc_example_is_what_render_prints(repository: Path, kinds: str, args: str, text: str) -> None:
    result = CliRunner().invoke(main, ["k8s", "render", str(repository), "--name", "fraud",
                                       "--image", "ghcr.io/acme/shoal:1.0", *shlex.split(args)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    if kinds != "all":
        wanted = set(kinds.split(","))
        out = to_yaml([d for d in yaml.safe_load_all(out) if d and d["kind"] in wanted])
    assert text == out


def test_the_doc_has_its_examples() -> None:
    assert len(RENDERED) == 3
