"""bench/accuracy.py's scoring: pair precision/recall and the per-image drop figures, on clusterings
small enough to count by hand."""

import numpy as np

from bench.accuracy import drop_scores, pair_scores
from bench.dedup_scale import STAR_SERIES


def test_drop_scores_count_images_not_pairs():
    # groups: g1 = a b c, g2 = d e, g3 = f. Clusters (id = representative): a holds a b d (d wrongly),
    # c is alone (a split of g1), e holds e f (f wrongly: its own group).
    ids = np.array(["a", "b", "c", "d", "e", "f"])
    group = np.array([1, 1, 1, 2, 2, 3])
    cluster = np.array(["a", "a", "c", "a", "e", "e"])
    s = drop_scores(ids, group, cluster)
    # dropped: b (right), d (wrong), f (wrong); should go: g1 2 + g2 1 + g3 0 = 3
    assert (s["dropped"], s["dropped_right"], s["should_drop"]) == (3, 1, 3)
    assert s["drop_precision"] == round(1 / 3, 4) and s["drop_recall"] == round(1 / 3, 4)
    # the same clustering by pairs: predicted a-b, a-d, b-d, e-f; right only a-b; positives 3 + 1
    p = pair_scores(group, cluster, np.zeros(6, dtype=bool))
    assert (p["predicted_pairs"], p["true_positive_pairs"], p["positive_pairs"]) == (4, 1, 4)


def test_drop_scores_perfect_and_empty_clusterings():
    ids = np.array(["a", "b", "c"])
    group = np.array([7, 7, 8])
    s = drop_scores(ids, group, np.array(["a", "a", "c"]))
    assert s["drop_precision"] == 1.0 and s["drop_recall"] == 1.0
    s = drop_scores(ids, group, ids)  # nothing dropped
    assert s["dropped"] == 0 and s["drop_precision"] == 1.0 and s["drop_recall"] == 0.0
    # a representative outside the scored images counts as wrong (a under z); b under a is right
    s = drop_scores(ids[:2], group[:2], np.array(["z", "a"]))
    assert s["dropped"] == 2 and s["dropped_right"] == 1


def test_star_series_pattern_matches_only_the_generated_polygons():
    import re
    pat = re.compile(STAR_SERIES)
    assert pat.search("/usr/share/openclipart/png/shapes/stars/star_64pt09step.png")
    assert not pat.search("/usr/share/openclipart/png/shapes/stars/star.png")
    assert not pat.search("/usr/share/openclipart/png/shapes/stars/estrella_01.png")
    assert not pat.search("/usr/share/openclipart/png/other/star_64pt09step.png.bak")
