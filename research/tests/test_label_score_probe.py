"""research/label_score_probe.py: the AUC by hand."""

from label_score_probe import auc


def test_auc_counts_wins_and_half_ties():
    # pairs (p, n): (0.9, 0.1) win, (0.9, 0.5) win, (0.5, 0.1) win, (0.5, 0.5) tie -> 3.5 / 4
    assert auc([0.9, 0.5], [0.1, 0.5]) == 0.875
    assert auc([0.1], [0.9]) == 0.0
