"""Settings of the classification stage: zero-shot prompts and the few-shot examples folder.

`fewshot_uri` defaults to $CURATION_FEWSHOT_URI; unset means the demo examples, set to '' means
few-shot is off. Bad values raise `SettingError` (one line) when the resource is built; a bad
environment value is listed in `environment_errors` and fails every run that uses the resource.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources import environment as env
from resources.corpus import environment_errors, fail_on_environment_errors
from resources.environment import SettingError


def default_fewshot_uri() -> str:
    return env.value_or_default("CURATION_FEWSHOT_URI")


class ClassifierSettings(dg.ConfigurableResource):
    """Zero-shot labels and prompt templates, and the few-shot examples (one sub-folder per label)."""

    labels: list[str] = Field(
        default_factory=lambda: ["a handwritten digit", "a photograph", "a video game sprite", "a playing card",
                                 "a user-interface icon", "a map tile"],
        description="Zero-shot labels (needs a model with a text tower, e.g. open_clip).",
    )
    templates: list[str] = Field(default_factory=lambda: ["a photo of {}.", "an image of {}."],
                                 description="Prompt templates; '{}' is replaced by the label.")
    top_k: int = Field(default=3, description="Labels kept per image with their probabilities (>= 1).")
    min_confidence: float = Field(default=0.3, description="Below this top-1 probability the label is 'unknown'.")
    fewshot_uri: str = Field(default_factory=default_fewshot_uri,
                             description="Folder or s3:// prefix of labelled examples, one sub-folder per label; "
                                         "'' disables few-shot ($CURATION_FEWSHOT_URI).")
    fewshot_min_confidence: float = Field(
        default=0.0, description="Below this calibrated probe probability the few-shot label is 'unknown' "
                                 "(reason low_confidence); probabilities are temperature-scaled on the validation split.")
    fewshot_open_set: bool = Field(
        default=True, description="Images far from every labelled example (out-of-distribution score above the "
                                  "probe's threshold) are 'unknown' (reason out_of_distribution).")
    fewshot_ood_quantile: float = Field(
        default=0.99, description="Share of the labelled examples (each scored without itself) inside the "
                                  "out-of-distribution threshold; 0.5..1.0.")
    environment_errors: list[str] = Field(
        default_factory=lambda: environment_errors(env.CLASSIFIER_VARS),
        description="Bad environment variables found when the code location loaded; runs fail while any is listed.")

    def model_post_init(self, context) -> None:
        env.positive_int("ClassifierSettings.top_k", self.top_k)
        for name in ("min_confidence", "fewshot_min_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SettingError(f"ClassifierSettings.{name}", value, "a probability in [0, 1]")
        if not 0.5 <= self.fewshot_ood_quantile <= 1.0:
            raise SettingError("ClassifierSettings.fewshot_ood_quantile", self.fewshot_ood_quantile, "a value in [0.5, 1.0]")
        for template in self.templates:
            if "{}" not in template:
                raise SettingError("ClassifierSettings.templates", template, "templates containing '{}' (the label)")
        if self.fewshot_uri:
            env.location("ClassifierSettings.fewshot_uri", self.fewshot_uri)

    def setup_for_execution(self, context) -> None:
        fail_on_environment_errors(self.environment_errors)
