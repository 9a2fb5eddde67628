"""What a Hugging Face model folder (``save_pretrained()`` output) must hold, checked before
transformers reads it, so that an incomplete folder fails its load naming what is missing.

A folder is served when it holds:

- ``config.json`` (the architecture);
- weights: ``model.safetensors``, ``model.safetensors.index.json`` (sharded),
  ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``;
- a tokenizer: ``tokenizer.json`` (a fast tokenizer), or ``tokenizer_config.json`` beside the
  vocabulary files of a slow one (``vocab.json`` + ``merges.txt``, ``vocab.txt``,
  ``spiece.model``, ``tokenizer.model``, ``sentencepiece.bpe.model``).

No torch or transformers import here: the repository index and detection use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LoadError

CONFIG = "config.json"
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHTS = (*SAFETENSORS, *PICKLED)
FAST_TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: A slow tokenizer's vocabulary: any one of these groups, beside tokenizer_config.json.
VOCABULARIES = (
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("spiece.model",),
    ("tokenizer.model",),
    ("sentencepiece.bpe.model",),
)
#: What identifies the folder (runtimes.RUNTIMES' artifacts): its weights. ``config.json``
#: alone is too common a name to claim a folder by; holding weights without it is reported.
ARTIFACTS = WEIGHTS


@dataclass(frozen=True)
class HFFolder:
    path: Path
    config: dict[str, Any]
    weights: str  # the weights file found (the first of WEIGHTS)
    tokenizer: str  # the tokenizer file found (tokenizer.json or tokenizer_config.json)

    @property
    def pickled(self) -> bool:
        """Weights in PyTorch's pickle format (``pytorch_model.bin``)."""
        return self.weights in PICKLED

    def pickle_files(self) -> list[Path]:
        """Every file transformers unpickles for these weights: ``pytorch_model.bin``, or the
        index (``pytorch_model.bin.index.json``) and each shard its ``weight_map`` names
        (``pytorch_model-00001-of-00002.bin``, ...). LoadError for an index that cannot be
        read, or that names a shard outside the folder or a shard that is missing."""
        if not self.pickled:
            return []
        if not self.weights.endswith(".index.json"):
            return [self.path / self.weights]
        shown = f"{self.path.name}/{self.weights}"
        try:
            index = json.loads((self.path / self.weights).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LoadError(f"cannot read {shown}: {type(exc).__name__}: {exc}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise LoadError(f"{shown} has no weight_map of tensor name -> shard file")
        files = [self.path / self.weights]
        for shard in sorted(set(weight_map.values())):
            path = self.path / shard
            if not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise LoadError(f"{shown} names shard {shard!r}, which is not in the folder")
            if not path.is_file():
                raise LoadError(f"{shown} names shard {shard!r}, which the folder lacks")
            files.append(path)
        return files


def looks_like_hf(folder: Path) -> bool:
    """Whether ``folder`` holds a piece of a Hugging Face model (config.json or weights)."""
    return any((folder / name).is_file() for name in (CONFIG, *WEIGHTS))


def inspect_folder(folder: Path) -> HFFolder:
    """The folder's parts; LoadError naming every missing piece."""
    shown = f"{folder.name}/"
    has_config = (folder / CONFIG).is_file()
    weights = next((w for w in WEIGHTS if (folder / w).is_file()), None)
    tokenizer = tokenizer_file(folder)
    missing = []
    if not has_config:
        missing.append(f"{CONFIG} (the model's architecture)")
    if weights is None:
        missing.append(f"weights ({' or '.join(WEIGHTS)})")
    if tokenizer is None:
        missing.append(
            f"a tokenizer ({FAST_TOKENIZER}, or {TOKENIZER_CONFIG} with its vocabulary files: "
            + ", ".join(" + ".join(group) for group in VOCABULARIES) + ")"
        )
    if missing:
        present = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        raise LoadError(
            f"{shown} is not a complete Hugging Face model folder: it lacks "
            + "; ".join(missing)
            + f" (it holds {', '.join(present) or 'no files'}). Save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder); Shoal never "
            "downloads the missing files"
        )
    assert weights is not None and tokenizer is not None
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadError(f"cannot read {shown}{CONFIG}: {type(exc).__name__}: {exc}") from None
    if not isinstance(config, dict):
        raise LoadError(f"{shown}{CONFIG} is not a JSON object")
    return HFFolder(folder, config, weights, tokenizer)


def tokenizer_file(folder: Path) -> str | None:
    if (folder / FAST_TOKENIZER).is_file():
        return FAST_TOKENIZER
    if (folder / TOKENIZER_CONFIG).is_file() and any(
        all((folder / name).is_file() for name in group) for group in VOCABULARIES
    ):
        return TOKENIZER_CONFIG
    return None


def read_config(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when it is absent or unreadable (the load says why)."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def remote_code(folder: HFFolder) -> str | None:
    """Why the folder needs code from outside transformers (``auto_map`` in config.json or
    tokenizer_config.json), or None."""
    found = []
    if folder.config.get("auto_map"):
        found.append(f"{CONFIG}'s auto_map ({', '.join(sorted(folder.config['auto_map']))})")
    tokenizer_config = folder.path / TOKENIZER_CONFIG
    if tokenizer_config.is_file():
        try:
            settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            settings = {}
        if isinstance(settings, dict) and settings.get("auto_map"):
            found.append(f"{TOKENIZER_CONFIG}'s auto_map")
    return " and ".join(found) or None
