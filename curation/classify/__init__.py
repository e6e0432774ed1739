"""Zero-shot and few-shot classification of embedded images, with an open set of labels.

Zero-shot (open_clip models only, `zeroshot`): labels and prompt templates come from config;
probabilities are ``softmax(logit_scale * image_emb @ text_emb.T)``, and the top label is ``unknown``
below `min_conf`.

Few-shot (`probe`): a folder or URI of labelled examples, one sub-folder per label, trains a
multinomial logistic-regression probe whose probabilities are temperature-scaled on its validation
split (`calibration`) and which says ``unknown`` for images far from every class's examples (an
out-of-distribution score with a threshold calibrated on the examples, `open_set`) or below a
calibrated confidence bar. Stored as JSON without pickle, applied per shard with numpy (`shard`).

Public names are re-exported here; see each module for its contract.
"""

from curation.classify.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    nll,
    per_class_report,
)
from curation.classify.common import LOW_CONFIDENCE, OUT_OF_DISTRIBUTION, UNKNOWN
from curation.classify.open_set import (
    OodReference,
    fit_ood,
    leave_one_out_scores,
    ood_score,
)
from curation.classify.probe import (
    IMAGE_SUFFIXES,
    PROBE_FORMAT,
    OpenSetResult,
    Probe,
    apply_probe,
    list_labelled_examples,
    load_probe,
    predict_open_set,
    probe_logits,
    probe_report,
    save_probe,
    train_probe,
    train_probe_from_folder,
)
from curation.classify.shard import (
    CLASSIFICATION_SCHEMA,
    ZeroShotConfig,
    classify_shard,
)
from curation.classify.zeroshot import (
    DEFAULT_TEMPLATES,
    ZeroShotResult,
    text_classifier,
    zero_shot,
)

__all__ = [
    "CLASSIFICATION_SCHEMA", "DEFAULT_TEMPLATES", "IMAGE_SUFFIXES", "LOW_CONFIDENCE", "OUT_OF_DISTRIBUTION",
    "PROBE_FORMAT", "UNKNOWN", "OodReference", "OpenSetResult", "Probe", "ZeroShotConfig", "ZeroShotResult",
    "apply_probe", "calibration_summary", "classify_shard", "expected_calibration_error", "fit_ood",
    "fit_temperature", "leave_one_out_scores", "list_labelled_examples", "load_probe", "nll", "ood_score",
    "per_class_report", "predict_open_set", "probe_logits", "probe_report", "save_probe", "text_classifier",
    "train_probe",
    "train_probe_from_folder", "zero_shot",
]
