"""docs/configuration.md is generated from the resource classes and the environment table and must
match them (regenerate with `python scripts/config_reference.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_current():
    gen = load_generator()
    assert (ROOT / "docs" / "configuration.md").read_text() == gen.render(), \
        "docs/configuration.md is stale: run `python scripts/config_reference.py`"


def test_reference_names_every_setting_and_env_var(monkeypatch):
    from resources import environment as env
    from resources.classifier import ClassifierSettings
    from resources.corpus import CorpusResource, StageSettings
    from resources.models import EmbedderResource
    from resources.stages import STAGE_CONFIGS

    monkeypatch.setenv("CURATION_SHARD_SIZE", "77")  # the reference does not depend on this machine's env
    text = load_generator().render()
    assert "`77`" not in text and str(ROOT) not in text
    for var in env.ENV_VARS:
        assert f"| `{var.name}` |" in text
    for cls in (CorpusResource, EmbedderResource, ClassifierSettings):
        for name in cls.model_fields:
            assert f"| `{name}` |" in text, name
    assert "| `inventory_workers` |" in text and set(StageSettings.model_fields) >= {"inventory", "dedup", "quality"}
    for cls in STAGE_CONFIGS:
        section = cls.section.split(".", 1)[1]
        for name in cls.model_fields:
            assert f"| `{section}.{name}` |" in text, (section, name)
