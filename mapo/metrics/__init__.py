"""Layer 5, metrics: what a set of trajectories or records scored (torch only when a function plays).

:mod:`~mapo.metrics.heldout` (the standard metric set and the held-out evaluator),
:mod:`~mapo.metrics.records` (the ``predictions.jsonl`` record and its statistics),
:mod:`~mapo.metrics.before_after` (two evaluations side by side, with a verdict).
"""
