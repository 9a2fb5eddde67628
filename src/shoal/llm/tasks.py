"""The tasks a Hugging Face folder is served for, and which one a folder's config.json means.

A config's ``architectures`` names the class that saved it; its suffix says the task:

=================================================  =====================
``…ForCausalLM``, ``…LMHeadModel`` (decoder)       text-generation
``…ForConditionalGeneration``, ``…LMHeadModel``    text2text-generation
  with ``is_encoder_decoder: true``
``…ForSequenceClassification``                     text-classification
``…ForTokenClassification``                        token-classification
``…ForMaskedLM``                                   fill-mask
``…Model`` (the bare encoder)                      feature-extraction
=================================================  =====================

``parameters.task`` may name the task instead; it may not contradict the architecture, except
that any encoder (a classifier's or a masked LM's) may serve ``feature-extraction``: its base
model is in the checkpoint and the head is dropped.
"""

from __future__ import annotations

from typing import Any

from ..errors import LoadError

TEXT_GENERATION = "text-generation"
TEXT2TEXT = "text2text-generation"
TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
FEATURE_EXTRACTION = "feature-extraction"
FILL_MASK = "fill-mask"

TASKS = (TEXT_GENERATION, TEXT2TEXT, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, FEATURE_EXTRACTION, FILL_MASK)
GENERATION_TASKS = frozenset({TEXT_GENERATION, TEXT2TEXT})

#: The transformers Auto class that loads a folder for each task.
AUTO_CLASSES = {
    TEXT_GENERATION: "AutoModelForCausalLM",
    TEXT2TEXT: "AutoModelForSeq2SeqLM",
    TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    FEATURE_EXTRACTION: "AutoModel",
    FILL_MASK: "AutoModelForMaskedLM",
}

#: Tasks an architecture of another task may also serve (explicit parameters.task only).
ALSO_SERVES = {
    TEXT_CLASSIFICATION: {FEATURE_EXTRACTION},
    TOKEN_CLASSIFICATION: {FEATURE_EXTRACTION},
    FILL_MASK: {FEATURE_EXTRACTION},
}


def architecture_task(architecture: str, config: dict[str, Any]) -> str | None:
    """The task an architecture class name means; None when its name does not tell."""
    encoder_decoder = bool(config.get("is_encoder_decoder"))
    if architecture.endswith("ForCausalLM"):
        return TEXT_GENERATION
    if architecture.endswith(("LMHeadModel", "ForConditionalGeneration")):
        if encoder_decoder:
            return TEXT2TEXT
        return TEXT_GENERATION if architecture.endswith("LMHeadModel") else None
    if architecture.endswith("ForSeq2SeqLM"):
        return TEXT2TEXT
    if architecture.endswith("ForSequenceClassification"):
        return TEXT_CLASSIFICATION
    if architecture.endswith("ForTokenClassification"):
        return TOKEN_CLASSIFICATION
    if architecture.endswith("ForMaskedLM"):
        return FILL_MASK
    if architecture.endswith("Model") and "For" not in architecture:
        return FEATURE_EXTRACTION
    return None


def resolve_task(config: dict[str, Any], wanted: Any, where: str = "config.json") -> str:
    """The task to serve: ``wanted`` (parameters.task) checked against the architecture, or
    the architecture's own. LoadError when neither tells, or when they disagree."""
    if wanted is not None and wanted not in TASKS:
        raise LoadError(f"parameters.task {wanted!r} is not a task; one of: {', '.join(TASKS)}")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = []
    architecture = str(architectures[0]) if architectures else None
    inferred = architecture_task(architecture, config) if architecture else None
    if wanted is None:
        if inferred is None:
            said = (
                f"its architecture {architecture!r} does not say which task it serves"
                if architecture else "it names no architectures"
            )
            raise LoadError(
                f"{where}: {said}; set parameters.task in model.yaml to one of: {', '.join(TASKS)}"
            )
        return inferred
    if inferred is not None and wanted != inferred and wanted not in ALSO_SERVES.get(inferred, ()):
        raise LoadError(
            f"parameters.task is {wanted!r}, but {where}'s architecture {architecture!r} is a "
            f"{inferred} model; drop parameters.task or set it to {inferred!r}"
        )
    return str(wanted)
