"""Layer 4, the engine: playing episodes with a model and the training forward.

:mod:`~mapo.engine.rollout` schedules many episodes turn by turn,
:mod:`~mapo.engine.generate` runs one turn for a batch (prefill, KV-cached decode),
:mod:`~mapo.engine.sampling` picks the next token, and :mod:`~mapo.engine.trajectory`
holds what an episode produced and collates it into the batch a step trains on.
"""
