"""Head scores and reasons (curation/scoring.py), the typed head/export/index settings, and
`curate similar`'s one-line errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curation.heads import Head, HeadSpec
from curation.scoring import apply_head_reasons, score_shard


def _head(reason="low_aesthetic", **rule) -> Head:
    spec = HeadSpec(name="aesthetic", uri="-", embedding_model="m", dim=2, reason=reason, **rule)
    return Head(spec, [(np.array([[1.0, 0.0]], np.float32), np.zeros(1, np.float32))])  # score = first coordinate


def test_no_heads_gives_ids_and_empty_reasons():
    emb = pl.DataFrame({"image_id": ["a", "b"], "embedding": [[1.0, 0.0], None]})
    scores = score_shard(emb, [])
    assert scores.columns == ["image_id", "reasons", "reject_details"] and scores["reasons"].to_list() == [[], []]
    curated = pl.DataFrame({"image_id": ["a", "b"], "keep": [True, False], "reasons": [[], ["corrupt"]]})
    assert apply_head_reasons(curated, scores).equals(curated)


def test_a_head_threshold_becomes_a_reason_on_kept_images_only():
    emb = pl.DataFrame({"image_id": ["a", "b", "c", "d"],
                        "embedding": [[1.0, 0.0], [0.0, 1.0], None, [0.1, 1.0]]})
    scores = score_shard(emb, [_head(reject_below=0.5)])
    assert scores["score_aesthetic"].to_list()[2] is None
    assert np.allclose(scores["score_aesthetic"].to_list()[:2], [1.0, 0.0])
    assert scores["reasons"].to_list() == [[], ["low_aesthetic"], [], ["low_aesthetic"]]
    assert scores["reject_details"][1].to_list()[0].startswith("low_aesthetic: score_aesthetic=0 < 0.5")
    curated = pl.DataFrame({"image_id": ["a", "b", "c", "d"], "keep": [True, True, True, False],
                            "reasons": [[], [], [], ["duplicate"]]})
    out = apply_head_reasons(curated, scores)
    assert out["keep"].to_list() == [True, False, True, False]
    assert out["reasons"].to_list() == [[], ["low_aesthetic"], [], ["duplicate"]]  # a reject keeps its own reasons
    nsfw = score_shard(emb, [_head(reason="nsfw", reject_above=0.5)])
    assert nsfw["reasons"].to_list() == [["nsfw"], [], [], []]


def test_head_and_export_settings_are_checked_in_one_line():
    from resources.corpus import StageSettings
    from resources.environment import SettingError
    from resources.stages import HeadSettings

    h = HeadSettings(name="nsfw", uri="x.safetensors", embedding_model="timm:tf_efficientnet_lite0", dim=1280,
                     activations=["relu", "sigmoid"], reason="nsfw", reject_above=0.5)
    spec = h.to_library()
    assert (spec.hidden_activation, spec.output_activation, spec.reject_above) == ("relu", "sigmoid", 0.5)
    with pytest.raises(SettingError, match=r"StageSettings.heads.activations"):
        HeadSettings(name="a", uri="x", embedding_model="m", dim=4, activations=["tanh", "none"])
    with pytest.raises(SettingError, match="a threshold needs a reason"):
        HeadSettings(name="a", uri="x", embedding_model="m", dim=4, reject_below=1.0)
    with pytest.raises(SettingError, match="distinct names"):
        StageSettings(heads=[h, h])
    with pytest.raises(SettingError, match=r"StageSettings.export.target_tar_bytes"):
        StageSettings(export={"target_tar_bytes": 10})
    with pytest.raises(SettingError, match=r"StageSettings.similarity.storage"):
        StageSettings(similarity={"storage": "pq"})
    assert StageSettings(similarity={"m": 16}).similarity.to_library().m == 16


def test_curate_similar_fails_in_one_line(tmp_path, capsys):
    from orchestration.cli import main

    assert main(["similar", "0123456789abcdef", "--output-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image id 0123456789abcdef is in no shard's image_embeddings" in err[0]
    assert main(["similar", "0123456789abcdef", "-k", "0", "--output-root", str(tmp_path)]) == 2
    assert "-k=0" in capsys.readouterr().err
