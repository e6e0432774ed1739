"""Settings of the classification stage: zero-shot prompts and the few-shot examples folder."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from resources.corpus import PROJECT_ROOT


def default_fewshot_uri() -> str:
    return os.environ.get("CURATION_FEWSHOT_URI") or str(PROJECT_ROOT / "data" / "demo_fewshot")


class ClassifierSettings(dg.ConfigurableResource):
    """Zero-shot labels and prompt templates, and the few-shot examples (one sub-folder per label)."""

    labels: list[str] = Field(
        default_factory=lambda: ["a handwritten digit", "a photograph", "a video game sprite", "a playing card",
                                 "a user-interface icon", "a map tile"],
        description="Zero-shot labels (needs a model with a text tower, e.g. open_clip).",
    )
    templates: list[str] = Field(default_factory=lambda: ["a photo of {}.", "an image of {}."],
                                 description="Prompt templates; '{}' is replaced by the label.")
    top_k: int = Field(default=3, description="Labels kept per image with their probabilities.")
    min_confidence: float = Field(default=0.3, description="Below this top-1 probability the label is 'unknown'.")
    fewshot_uri: str = Field(default_factory=default_fewshot_uri,
                             description="Folder or s3:// prefix of labelled examples, one sub-folder per label; '' disables few-shot.")
    fewshot_min_confidence: float = Field(default=0.0, description="Below this probe probability the few-shot label is 'unknown'.")
