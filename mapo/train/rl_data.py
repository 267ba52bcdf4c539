"""Where RL's prompts come from: the embedded synthetic task or a benchmark file, and the held-out set.

``Data.prompts(cursor, count)`` is a pure function of the cursor (a fresh synthetic sample per
index, or a seeded permutation per epoch of a fixed list), which is what makes a resumed run
and a data-parallel run draw the same prompts as an uninterrupted single-process one.

Samples of a fixed list are made playable just before their rollout
(:func:`mapo.data.prepare.prepare_sample`: full decode, padding or upscaling into the
policy's pixel range). A sample that cannot be played is skipped, recorded in
``Data.skipped`` (file, row, reason) and replaced by the next playable one of the list;
whether a sample plays depends only on the sample, so the stream stays a pure function
of the cursor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mapo.core.config import knob
from mapo.data.synth import SynthOverrides


@dataclass(frozen=True)
class RLDataConfig:
    """Training prompts and the held-out set."""

    source: str | None = knob(
        None, "training samples: a path load_samples reads (V* folder, HR-Bench TSV, MME JSON, DeepEyes parquet); "
        "null = the embedded synthetic task"
    )
    synth_level: str = knob("easy", "synthetic task level when source is null (mapo.data.synth.LEVELS)")
    synth: SynthOverrides = knob(factory=SynthOverrides, help="SynthConfig knobs on top of the level, e.g. {tint_strength: 0.5}")
    n: int = knob(0, "training samples: synthetic, 0 = a fresh sample per prompt, else cycle over n; source, first n (0 = all)")
    seed: int = knob(0, "seed of the synthetic training samples and of the order prompts are drawn in")
    eval_source: str | None = knob(
        None, "held-out samples path; null = synthetic samples of eval_seed, or with a source its last n_eval samples"
    )
    eval_seed: int = knob(1_000_003, "seed of the synthetic held-out samples (must differ from seed)")
    n_eval: int = knob(16, "held-out samples for the periodic greedy evaluation (0 = no evaluation)")

    def __post_init__(self) -> None:
        if self.n < 0 or self.n_eval < 0:
            raise ValueError(f"data.n and data.n_eval must be >= 0, got {self.n} and {self.n_eval}")
        if self.eval_seed == self.seed and self.source is None:
            raise ValueError(f"data.eval_seed must differ from data.seed ({self.seed}) so evaluation is held out")



@dataclass
class Data:
    """Where the prompts of each step come from: a fixed list, or fresh synthetic samples."""

    train: list | None  # fixed training samples; None = synthetic sample i for cursor i
    heldout: list
    synth_config: Any  # mapo.data.synth.SynthConfig of the synthetic task (None with a source)
    seed: int
    origins: dict = field(default_factory=dict)  # sample id -> (file, row) of a loaded source
    prepare: Callable[[Any], Any] | None = None  # sample -> playable sample, ValueError when it cannot be played
    skipped: dict = field(default_factory=dict)  # sample id -> {"file", "row", "id", "reason"}

    def prompts(self, cursor: int, count: int) -> list:
        """Samples ``cursor .. cursor + count - 1`` of the training stream (a pure function of the cursor)."""
        from mapo.data import synth

        if self.train is None:
            return [synth.generate_one(self.synth_config, self.seed, i) for i in range(cursor, cursor + count)]
        return [self._playable(shuffled_index(c, len(self.train), self.seed)) for c in range(cursor, cursor + count)]

    def _playable(self, index: int) -> Any:
        """Sample ``index`` prepared, or the next one of the list that can be played."""
        n = len(self.train)
        for k in range(n):
            sample = self.train[(index + k) % n]
            if sample.id in self.skipped:
                continue
            if self.prepare is None:
                return sample
            try:
                return self.prepare(sample)
            except ValueError as e:
                self.skip(sample, str(e))
        raise ValueError(f"none of the {n} training samples can be played; skipped rows: {list(self.skipped.values())[:3]}")

    def skip(self, sample: Any, reason: str) -> None:
        file, row = self.origins.get(sample.id, ("", sample.id))
        self.skipped[sample.id] = {"file": file, "row": row, "id": sample.id, "reason": reason}

    def prepare_heldout(self) -> None:
        """Prepare the held-out samples now (there are few), skipping those that cannot be played."""
        if self.prepare is None:
            return
        kept = []
        for sample in self.heldout:
            try:
                kept.append(self.prepare(sample))
            except ValueError as e:
                self.skip(sample, str(e))
        self.heldout = kept


def require_target_boxes(data: Data) -> None:
    """ValueError (one line) unless every training and held-out sample has a target box.

    For ``semantic_target=oracle_iou``; synthetic training samples (generated per prompt)
    are checked through the first one (every sample of a level is made the same way).
    """
    train = data.train if data.train is not None else data.prompts(0, 1)
    for where, samples in (("training", train), ("held-out", data.heldout)):
        for sample in samples:
            if not sample.target_boxes:
                file, row = data.origins.get(sample.id, ("", sample.id))
                at = f"{file} row {row}" if file else f"sample {sample.id!r}"
                raise ValueError(
                    f"semantic_target=oracle_iou scores each crop by its IoU with the target box, but {where} {at} has "
                    "no target box: use data with boxes (synthetic, V*) or another semantic_target"
                )


def shuffled_index(cursor: int, n: int, seed: int) -> int:
    """Position ``cursor`` of an endless stream of seeded permutations of ``range(n)`` (one per epoch)."""
    epoch, pos = divmod(cursor, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def load_data(cfg: RLDataConfig) -> Data:
    """Training and held-out samples; a source with no usable sample stops here, saying why."""
    from mapo.data import synth

    if cfg.source is None:
        level = synth.level_config(cfg.synth_level, **cfg.synth.set_keys())
        train = None if cfg.n == 0 else [synth.generate_one(level, cfg.seed, i) for i in range(cfg.n)]
        heldout = [] if cfg.eval_source else synth.generate(cfg.n_eval, cfg.eval_seed, level)
        data = Data(train, heldout, level, cfg.seed)
    else:
        samples, origins = _usable(cfg.source)
        heldout = []
        if cfg.eval_source is None and cfg.n_eval:
            if len(samples) <= cfg.n_eval:
                raise ValueError(
                    f"data.source {cfg.source} has {len(samples)} usable samples, not more than n_eval={cfg.n_eval}: "
                    "set data.eval_source, lower data.n_eval, or set it to 0"
                )
            samples, heldout = samples[: -cfg.n_eval], samples[-cfg.n_eval :]
        data = Data(samples[: cfg.n] if cfg.n else samples, heldout, None, cfg.seed, origins=origins)
    if cfg.eval_source is not None:
        heldout, origins = _usable(cfg.eval_source)
        data.heldout = heldout[: cfg.n_eval]
        data.origins = {**origins, **data.origins}
    return data


def fit_data_to_policy(data: Data, tool_from_data: bool, rollout_cfg: Any, policy: Any) -> Any:
    """``rollout_cfg`` with the data's tool budgets; ``data`` set to fit each sample for ``policy`` as it is drawn.

    Generated samples carry the budgets their task was made for (used when ``tool_from_data``).
    One sample that cannot be played (truncated image, >26 options) is skipped, not fatal;
    samples are fitted for the policy's own patch x merge factor (28 or 32 px), as the
    rollout plays them. The held-out samples are fitted now.
    """
    from mapo.data.prepare import prepare_sample
    from mapo.policy.processor import pixel_range, policy_tool

    first = data.prompts(0, 1)[0]
    if tool_from_data and first.task is not None:  # a generated sample: the budgets its task was made for
        from mapo.data.task import tool_config_for

        rollout_cfg = dataclasses.replace(rollout_cfg, tool=tool_config_for(first))
    data.prepare = functools.partial(
        prepare_sample, tool=policy_tool(rollout_cfg.tool, policy.processor), pixels=pixel_range(policy.processor)
    )
    data.prepare_heldout()
    return rollout_cfg


def _usable(source: str) -> tuple[list, dict]:
    """Samples of ``source`` that have an answer to reward, and their (file, row); ValueError when there are none."""
    from mapo.data import load_samples

    loaded = load_samples(source)
    usable = [s for s in loaded if s.answer]
    if not usable:
        report = loaded.report.summary() if hasattr(loaded, "report") else ""
        raise ValueError(f"data source {source} yields no usable samples (each needs a question and an answer)\n{report}")
    return usable, dict(loaded.report.origins)
