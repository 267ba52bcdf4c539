"""Layer 8, pipelines: runs made of several recipes.

The demo (:mod:`~mapo.pipelines.demo`: data, verifier, warm start, RL, evaluations,
summary, report; its config, summary and stage cache beside it), GRPO-vs-MAPO
comparisons over seeds (:mod:`~mapo.pipelines.compare`) and the rollout benchmark
(:mod:`~mapo.pipelines.bench`).
"""
