"""The quality filter (stage 3): which images make the curated set, and why each other one doesn't.

  config    QualityConfig: thresholds and the profile (`auto`, `photo`, `graphics`), documented
  checks    content kind (photo / graphic / cutout) and the checks that fit each kind; REASONS
  evaluate  evaluate(inventory, clusters, cfg) -> curated_images rows; reject_counts
"""

from curation.quality.checks import DETAIL_DTYPE, KINDS, REASONS, kind_expr
from curation.quality.config import PROFILES, QualityConfig
from curation.quality.evaluate import evaluate, reject_counts

__all__ = ["DETAIL_DTYPE", "KINDS", "PROFILES", "REASONS", "QualityConfig", "evaluate", "kind_expr", "reject_counts"]
