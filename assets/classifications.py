"""Stage 5, `image_classifications` (zero-shot + few-shot labels per shard), and the `few_shot_probe`.

`few_shot_probe` is the probe's one writer. `image_classifications` depends on it and never trains
it: it applies the stored probe when there is one trained on the current model; otherwise its
few-shot columns are null and its metadata records why (`few_shot: unavailable: <reason>`)."""

import time

import dagster as dg

from assets._common import counts_md, per_shard, read_stage
from assets.embeddings import image_opener
from assets.factory import stage_asset
from curation import storage
from curation.stages import FEW_SHOT_PROBE, IMAGE_CLASSIFICATIONS, IMAGE_EMBEDDINGS
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource
from resources.models import EmbedderResource

MODELS_DIR = "models"


def probe_uri(corpus: CorpusResource) -> str:
    return corpus.stage_uri(MODELS_DIR, FEW_SHOT_PROBE, ".json")


def train_and_save_probe(corpus: CorpusResource, classifier: ClassifierSettings, embedder: EmbedderResource):
    from curation.classify import save_probe, train_probe_from_folder

    probe = train_probe_from_folder(embedder.get_embedder(), classifier.fewshot_uri, image_opener(None),
                                    ood_quantile=classifier.fewshot_ood_quantile)
    save_probe(probe, probe_uri(corpus))
    return probe


def stored_probe(corpus: CorpusResource, classifier: ClassifierSettings, model_id: str):
    """(probe, None) for the stored probe when it was trained on `model_id`, else (None, reason)."""
    from curation.classify import PROBE_FORMAT, load_probe

    if not classifier.fewshot_uri:
        return None, "few-shot is disabled (classifier.fewshot_uri is empty)"
    uri = probe_uri(corpus)
    if not storage.exists(uri):
        return None, f"no few-shot probe stored at {uri}: materialise {FEW_SHOT_PROBE} first"
    probe = load_probe(uri)
    if probe.model != model_id:
        return None, (f"the stored probe was trained on {probe.model!r}, embeddings are {model_id!r}: "
                      f"re-materialise {FEW_SHOT_PROBE}")
    if probe.format != PROBE_FORMAT:
        return None, (f"the stored probe is {probe.format!r} (uncalibrated, no 'unknown'); this version needs "
                      f"{PROBE_FORMAT!r}: re-materialise {FEW_SHOT_PROBE}")
    return probe, None


@stage_asset(FEW_SHOT_PROBE)
def few_shot_probe(context: dg.AssetExecutionContext, corpus: CorpusResource, classifier: ClassifierSettings,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
    if not classifier.fewshot_uri:
        raise dg.Failure("few-shot is disabled (classifier.fewshot_uri is empty); set CURATION_FEWSHOT_URI")
    t0 = time.monotonic()
    probe = train_and_save_probe(corpus, classifier, embedder)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(probe_uri(corpus)),
            "val_accuracy": float(probe.val_accuracy) if probe.val_accuracy is not None else None,
            "classes": ", ".join(probe.classes),
            "n_train": probe.n_train,
            "n_val": probe.n_val,
            "chance_accuracy": round(1.0 / max(1, len(probe.classes)), 4),
            "model": probe.model,
            **_probe_figures(probe),
            "elapsed_s": round(time.monotonic() - t0, 3),
        }
    )


def _probe_figures(probe) -> dict:
    """Calibration, open-set rule and per-class precision/recall of the probe, as run metadata."""
    from curation.classify import probe_report

    figures = probe_report(probe)
    if "per_class_md" in figures:
        figures["per_class"] = dg.MetadataValue.md(figures.pop("per_class_md"))
    return figures


@stage_asset(IMAGE_CLASSIFICATIONS)
def image_classifications(context: dg.AssetExecutionContext, corpus: CorpusResource, classifier: ClassifierSettings,
                          embedder: EmbedderResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _image_classifications_one(context, corpus, classifier, embedder, shard))


def _zero_shot(context, corpus: CorpusResource, classifier: ClassifierSettings, model):
    """(ZeroShotConfig, 'on') or (None, 'unavailable: <reason>') for models without a text tower."""
    from curation.classify import ZeroShotConfig, text_classifier
    from curation.embedding import ZeroShotUnavailableError

    try:
        text_emb = text_classifier(model, classifier.labels, classifier.templates,
                                   cache_dir=corpus.stage_dir(MODELS_DIR, "text_embeddings"))
    except ZeroShotUnavailableError as exc:
        context.log.warning(f"zero-shot labels skipped: {exc}")
        return None, f"unavailable: {exc}"
    return ZeroShotConfig(tuple(classifier.labels), text_emb, model.logit_scale, classifier.top_k,
                          classifier.min_confidence), "on"


def _image_classifications_one(context: dg.AssetExecutionContext, corpus: CorpusResource, classifier: ClassifierSettings,
                               embedder: EmbedderResource, shard: str) -> dict:
    from curation.classify import classify_shard
    from curation.embedding import add_imagenet_columns

    t0 = time.monotonic()
    emb = read_stage(context, corpus, IMAGE_EMBEDDINGS, shard)
    model = embedder.get_embedder()
    zs_cfg, zs_note = _zero_shot(context, corpus, classifier, model)
    probe, fs_reason = stored_probe(corpus, classifier, model.model_id)
    if fs_reason is not None:
        context.log.warning(f"few-shot labels unavailable for {shard}: {fs_reason}")
    out = classify_shard(emb, zs_cfg, probe, model=model.model_id, fs_min_conf=classifier.fewshot_min_confidence,
                         fs_open_set=classifier.fewshot_open_set)
    out = add_imagenet_columns(out, emb)  # the offline model's ImageNet top-k (null for models without a head)
    uri = corpus.stage_uri(IMAGE_CLASSIFICATIONS, shard)
    storage.write_parquet(out, uri)
    fs_counts = dict(out.group_by("fs_label").len().sort("len", descending=True).iter_rows()) if probe else {}
    zs_counts = dict(out.group_by("zs_label").len().sort("len", descending=True).iter_rows()) if zs_cfg else {}
    if probe is None:
        few_shot = f"unavailable: {fs_reason}"
    elif probe.val_accuracy is not None:
        few_shot = f"probe val accuracy {probe.val_accuracy:.3f}"
    else:
        few_shot = "on"
    return {
        "dagster/row_count": len(out),
        "path": dg.MetadataValue.path(uri),
        "zero_shot": zs_note,
        "few_shot": few_shot,
        "few_shot_labels": counts_md({str(k): int(v) for k, v in fs_counts.items()}, ("label", "images")),
        "zero_shot_labels": counts_md({str(k): int(v) for k, v in zs_counts.items()}, ("label", "images")),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
