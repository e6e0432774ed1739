"""Stage 5, `image_classifications` (zero-shot + few-shot labels per shard), and the `few_shot_probe`."""


import time

import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, RETRY, counts_md, per_shard, read_stage
from assets.embeddings import image_embeddings, image_opener
from curation import storage
from orchestration.k8s import cpu_step_tags
from partitions.shards import SHARDS
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource
from resources.models import EmbedderResource


def probe_uri(corpus: CorpusResource) -> str:
    return corpus.stage_uri("models", "few_shot_probe", ".json")


def train_and_save_probe(corpus: CorpusResource, classifier: ClassifierSettings, embedder: EmbedderResource):
    from curation.classify import save_probe, train_probe_from_folder

    probe = train_probe_from_folder(embedder.get_embedder(), classifier.fewshot_uri, image_opener(None))
    save_probe(probe, probe_uri(corpus))
    return probe


def current_probe(corpus: CorpusResource, classifier: ClassifierSettings, embedder: EmbedderResource):
    """The stored probe when it was trained on this embedder's model, else train (and store) it."""
    from curation.classify import load_probe

    if not classifier.fewshot_uri:
        return None
    uri = probe_uri(corpus)
    if storage.exists(uri):
        probe = load_probe(uri)
        if probe.model == embedder.get_embedder().model_id:
            return probe
    return train_and_save_probe(corpus, classifier, embedder)


@dg.asset(
    group_name="ml",
    kinds={"pytorch", "scikitlearn", "json"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="2", memory="8Gi"),
    retry_policy=RETRY,
    description=(
        "A linear probe trained on embeddings of the few-shot examples (one sub-folder per label), stored as "
        "JSON (no pickle) with its validation accuracy; applied to every shard by image_classifications."
    ),
)
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
            "elapsed_s": round(time.monotonic() - t0, 3),
        }
    )


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[image_embeddings],
    group_name="ml",
    kinds={"pytorch", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="2", memory="8Gi"),
    retry_policy=RETRY,
    description=(
        "Zero-shot labels from text prompts (top-k with probabilities, 'unknown' below the confidence bar; needs a "
        "model with a text tower) and few-shot labels from the linear probe, for every embedded image."
    ),
)
def image_classifications(context: dg.AssetExecutionContext, corpus: CorpusResource, classifier: ClassifierSettings,
                          embedder: EmbedderResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _image_classifications_one(context, corpus, classifier, embedder, shard))


def _image_classifications_one(context: dg.AssetExecutionContext, corpus: CorpusResource, classifier: ClassifierSettings,
                          embedder: EmbedderResource, shard: str) -> dict:
    from curation.classify import ZeroShotConfig, classify_shard, text_classifier
    from curation.embedding import ZeroShotUnavailableError

    t0 = time.monotonic()
    emb = read_stage(context, corpus, "image_embeddings", shard)
    model = embedder.get_embedder()
    zs_cfg, zs_note = None, "on"
    try:
        text_emb = text_classifier(model, classifier.labels, classifier.templates,
                                   cache_dir=corpus.stage_dir("models", "text_embeddings"))
        zs_cfg = ZeroShotConfig(tuple(classifier.labels), text_emb, model.logit_scale, classifier.top_k,
                                classifier.min_confidence)
    except ZeroShotUnavailableError as exc:
        zs_note = f"unavailable: {exc}"
        context.log.warning(f"zero-shot labels skipped: {exc}")
    probe = current_probe(corpus, classifier, embedder)
    out = classify_shard(emb, zs_cfg, probe, model=model.model_id)
    if probe is not None and classifier.fewshot_min_confidence > 0:
        out = out.with_columns(
            pl.when(pl.col("fs_prob") < classifier.fewshot_min_confidence).then(pl.lit("unknown"))
            .otherwise(pl.col("fs_label")).alias("fs_label"))
    uri = corpus.stage_uri("image_classifications", shard)
    storage.write_parquet(out, uri)
    fs_counts = dict(out.group_by("fs_label").len().sort("len", descending=True).iter_rows()) if probe else {}
    zs_counts = dict(out.group_by("zs_label").len().sort("len", descending=True).iter_rows()) if zs_cfg else {}
    return {
        "dagster/row_count": len(out),
        "path": dg.MetadataValue.path(uri),
        "zero_shot": zs_note,
        "few_shot": f"probe val accuracy {probe.val_accuracy:.3f}" if probe and probe.val_accuracy is not None else ("on" if probe else "off"),
        "few_shot_labels": counts_md({str(k): int(v) for k, v in fs_counts.items()}, ("label", "images")),
        "zero_shot_labels": counts_md({str(k): int(v) for k, v in zs_counts.items()}, ("label", "images")),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
