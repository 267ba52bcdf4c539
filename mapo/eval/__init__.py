"""``mapo eval``: play the agent greedily on a benchmark and score it the benchmark's way.

For every sample the agent loop (:func:`mapo.engine.rollout.rollout`, one greedy episode,
the same tool and coordinate code as training) produces a trajectory; the
verifier scores each (description, crop) pair; the record (``mapo.metrics.records``) is
appended to ``OUT/predictions.jsonl`` with the input image (a downscaled copy)
and every crop saved next to it. ``OUT/metrics.json`` holds the benchmark's
official aggregation (``mapo.data.scoring``: V* per category, HR-Bench per
cycle, MME-RealWorld per task/subtask/category), tool statistics
(``mapo.metrics.records.record_statistics``), crop IoU where target boxes exist, and
the rows of the source that could not be loaded.

Resumable: records already in ``predictions.jsonl`` are skipped, so an
interrupted eval continues where it stopped (a half-written last line is cut
off). Samples are processed in chunks of ``batch_size``; an interruption loses
at most the chunk in flight. ``OUT/eval.json`` holds the fingerprint of the
model, the data and the config; an ``OUT`` holding another evaluation is refused
(``overwrite=True`` clears it first), so predictions of two models never merge.

One bad sample never aborts the evaluation: a row that cannot be loaded, an
image that does not decode in full, more than 26 options, or a rollout that
fails on that sample alone, is skipped and listed in ``metrics.json``
(``skipped_rows``: file, row, reason) and left out of the official score. Images
the policy cannot take as they are but that can be padded or upscaled into its
pixel range are played (``mapo.data.prepare``); their record's
``meta.image_adjusted`` says how.

Decisions and departures:

- The extracted answer is read from the ``<answer>`` block only. A model that
  never answers is scored wrong (``prediction`` null, ``finish_reason`` kept);
  DeepEyes' own eval falls back to the whole last response, which lets a model
  that never closes its answer tag still score.
- Multiple choice uses ``extract_choice`` (every benchmark; ``scoring`` adds
  the same aggregation read as lmms-eval or VLMEvalKit read it, see
  ``mapo.data.harness``); open questions (DeepEyes parquet) use
  ``mapo.algo.reward.answer_matches`` (normalised exact match). There is no official
  aggregation for DeepEyes data: accuracy overall and per category is reported.
- Synthetic samples carry the pixel budgets their task was designed for
  (``Sample.task``, :class:`mapo.data.task.TaskSpec`); with ``tool_from_data`` those budgets are used,
  as in SFT and RL. Real benchmarks use ``rollout.tool``, which :func:`eval_config` fills
  with the model's own processor range (:mod:`mapo.eval.config`).
- Each sample is fitted for the policy's own patch x merge factor (28 px for Qwen2.5-VL,
  32 px for Qwen3-VL), the one the rollout applies (:func:`mapo.policy.processor.policy_tool`).
- The ``deepeyes`` / ``deepeyes-hrbench`` presets reproduce DeepEyes' prompts,
  observation text, pixel budgets (max 16384·28·28), turns and tokens per turn
  (``eval/eval_vstar.py`` / ``eval/eval_hrbench.py`` of Visual-Agent/DeepEyes); MAPO's
  description tag is still parsed but not asked for, so DeepEyes-style models get
  ``s_missing`` for every observation.
- Semantic scores are training's (:mod:`mapo.algo.semantic`: the same
  ``semantic_target``, description-length guard and ``s_missing`` rules), so
  the eval's ``semantic_score_mean`` is the quantity MAPO optimises.

Modules: :mod:`~mapo.eval.config` (settings, the DeepEyes preset),
:mod:`~mapo.eval.samples` (loading, judging, official aggregation),
:mod:`~mapo.eval.record` (trajectory -> record), :mod:`~mapo.eval.outdir`
(fingerprint, the eval directory), :mod:`~mapo.eval.run` (the loop).
"""

from __future__ import annotations

from mapo.eval.config import (
    DEEPEYES_INSTRUCTION,
    DEEPEYES_MAX_PIXELS,
    DEEPEYES_SYSTEM,
    PRESETS,
    EvalConfig,
    deepeyes_rollout,
    eval_config,
    model_layer,
)
from mapo.eval.outdir import (
    EVAL_FILE,
    FINGERPRINT_IGNORE,
    MANIFEST_FILE,
    OUTPUTS,
    SKIPPED_FILE,
    claim_out_dir,
    data_fingerprint,
    eval_fingerprint,
    written_outputs,
)
from mapo.eval.record import prediction_record
from mapo.eval.run import MAX_LISTED_ROWS, EvalResult, ProgressLine, evaluate
from mapo.eval.samples import MAX_SYNTH_SAMPLES, SYNTH_SPEC, judge, load_eval_samples, official_scores

__all__ = [
    "DEEPEYES_INSTRUCTION",
    "DEEPEYES_MAX_PIXELS",
    "DEEPEYES_SYSTEM",
    "EVAL_FILE",
    "EvalConfig",
    "EvalResult",
    "PRESETS",
    "FINGERPRINT_IGNORE",
    "MANIFEST_FILE",
    "MAX_LISTED_ROWS",
    "MAX_SYNTH_SAMPLES",
    "OUTPUTS",
    "ProgressLine",
    "SKIPPED_FILE",
    "SYNTH_SPEC",
    "claim_out_dir",
    "data_fingerprint",
    "deepeyes_rollout",
    "eval_config",
    "eval_fingerprint",
    "evaluate",
    "judge",
    "load_eval_samples",
    "model_layer",
    "official_scores",
    "prediction_record",
    "written_outputs",
]
