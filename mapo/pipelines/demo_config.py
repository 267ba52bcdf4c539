"""The settings of ``mapo demo``'s pipeline (:class:`PipelineConfig`) and the RL stage's config built from them.

Every stage's config is a section here: the held-out set, the verifier recipe (or the
shipped one), the warm start, and the RL stage's keys (:data:`RLOverrides`, checked
like :class:`~mapo.train.rl.RLConfig`'s). :mod:`mapo.pipelines.demo` runs the stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.config import from_dict, knob, partial, to_dict
from mapo.data.synth import task_fingerprint
from mapo.train.rl import RLConfig
from mapo.train.sft import SFTConfig
from mapo.verifier.train import VerifierTrainConfig

# The RL stage's keys (`mapo train --show-config`), typed and checked like RLConfig's; unset ones keep
# RLConfig's defaults, and policy, verifier and data.eval_source are filled in by the pipeline.
RLOverrides = partial(RLConfig)


@dataclass(frozen=True)
class HeldoutConfig:
    """The validation set (written once, read by the RL run's periodic evaluation and every validation figure).

    Settings, learning rates, step counts and checkpoints are chosen on it. Its task level
    and synthetic overrides are the RL stage's (``rl.data.synth_level``, ``rl.data.synth``),
    so the samples come from the training distribution.
    """

    n: int = knob(48, "validation (held-out) samples")
    seed: int = knob(1_000_003, "seed of the validation samples (must differ from the training and test seeds)")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"data.n must be >= 1 held-out sample, got {self.n}")


@dataclass(frozen=True)
class TestSetConfig:
    """The test set: every policy the pipeline reports is evaluated on it once, and nothing is chosen on it.

    Same task as the validation set (the RL stage's level and overrides), another seed.
    """

    n: int = knob(400, "test samples (0 = no test set: the figures are then on the validation set, and say so)")
    seed: int = knob(2_000_003, "seed of the test samples (must differ from data.seed and rl.data.seed)")

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"test.n must be >= 0 (0 = no test set), got {self.n}")


@dataclass(frozen=True)
class WarmStartConfig:
    """Where the RL stage starts from."""

    source: str = knob(
        "default", "'default': the shipped warm start (mapo.policy.load_default), or SFT with the recipe below when "
        "none is shipped; 'shipped:NAME': the checkpoint mapo/assets/NAME, checked against its manifest; 'sft': "
        "always train it with the recipe below (cached); or a local policy checkpoint directory"
    )
    sft_config: str | None = knob(
        "configs/warmstart.yaml", "YAML of the SFT recipe used when source is 'sft' or no default is shipped "
        "(the recipe of the shipped default); null = the `sft` mapping below"
    )
    sft: SFTConfig = knob(factory=SFTConfig, help="the SFT recipe when sft_config is null")

    def recipe(self) -> SFTConfig:
        """The SFT recipe: ``sft_config`` loaded, else ``sft``."""
        from mapo.core.config import find_config_file, load_config

        if not self.sft_config:
            return self.sft
        return load_config(SFTConfig, find_config_file(self.sft_config) or self.sft_config)  # works from any folder


@dataclass(frozen=True)
class SearchCheckConfig:
    """Policies evaluated where the zoom location matters (:mod:`mapo.pipelines.search_check`); nothing trained.

    A test set of ``level`` (its own seed, never trained or chosen on), evaluated greedily
    with the RL stage's budgets. Empty ``policies`` skips the check.
    """

    policies: tuple[str, ...] = knob((), "policies to evaluate: 'default', 'shipped:NAME' or a checkpoint directory "
                                         "(empty: no check)")
    level: str = knob("pattern_distractors", "synthetic level of the check's test set (`mapo data synth --help`)")
    n: int = knob(400, "test samples")
    seed: int = knob(2_000_003, "seed of the test samples")

    def __post_init__(self) -> None:
        from mapo.data.synth import LEVELS

        if self.level not in LEVELS:
            raise ValueError(f"search.level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.n < 1:
            raise ValueError(f"search.n must be >= 1 test sample, got {self.n}")

    def spec(self) -> dict[str, Any]:
        """What the check's test set is a function of (the cache key, like the validation and test sets')."""
        return {"n": self.n, "seed": self.seed, "level": self.level, "synth": {},
                "task": task_fingerprint(self.level, {})}


@dataclass(frozen=True)
class PipelineConfig:
    """``mapo demo``: every stage of the embedded default pipeline."""

    cache_dir: str = knob("runs/cache", "where cached stages live: <cache_dir>/<stage>-<hash of its config>")
    threads: int = knob(1, "torch CPU threads (on 2 shared cores one thread is fastest)")
    data: HeldoutConfig = knob(factory=HeldoutConfig, help="the validation (held-out) set settings are chosen on")
    test: TestSetConfig = knob(factory=TestSetConfig, help="the test set every reported figure is measured on once")
    verifier_source: str = knob(
        "default", "'default': the shipped verifier (mapo/assets/verifier) when the training config in its manifest "
        "equals `verifier` below (speed-only keys aside), else trained with `verifier` (cached), saying why; "
        "'train': always trained with `verifier` (cached); or a local CLIP/SigLIP directory"
    )
    verifier: VerifierTrainConfig = knob(factory=VerifierTrainConfig, help="the tiny CLIP verifier (`mapo verifier train`)")
    warmstart: WarmStartConfig = knob(factory=WarmStartConfig, help="the policy RL starts from")
    rl: RLOverrides = knob(
        factory=RLOverrides, help="RLConfig keys of the RL stage (`mapo train --show-config`); policy, verifier and "
        "data.eval_source are filled in by the pipeline"
    )
    eval_batch_size: int = knob(16, "held-out episodes generated together")
    search: SearchCheckConfig = knob(factory=SearchCheckConfig, help="policies evaluated where the zoom location "
                                                                     "matters (evaluation only)")

    def __post_init__(self) -> None:
        if not self.verifier_source:
            raise ValueError("verifier_source must be 'default', 'train' or a verifier directory, got an empty string")
        if self.threads < 0 or self.eval_batch_size < 1:
            raise ValueError(f"threads must be >= 0 and eval_batch_size >= 1, got {self.threads}, {self.eval_batch_size}")
        taken = [k for k in ("policy", "verifier") if getattr(self.rl, k) is not None]
        if taken or self.rl.data.eval_source is not None:
            raise ValueError(f"rl.{(taken or ['data.eval_source'])[0]} is set by the pipeline; leave it out of rl")
        rl = rl_config(self, policy="default", verifier="v", heldout="h")  # reject bad RL keys now, not after the verifier
        if self.test.n and self.test.seed in (self.data.seed, rl.data.seed):
            raise ValueError(
                f"test.seed ({self.test.seed}) must differ from the validation seed data.seed ({self.data.seed}) and "
                f"the training seed rl.data.seed ({rl.data.seed}): nothing may be chosen or trained on the test set"
            )

    def heldout_spec(self) -> dict[str, Any]:
        """What the validation set is a function of: its size and seed, the RL stage's level and overrides.

        ``task`` is the resolved SynthConfig, so a change of a level's defaults in the code is a new cache key.
        """
        return self._set_spec(self.data.n, self.data.seed)

    def test_spec(self) -> dict[str, Any] | None:
        """:meth:`heldout_spec` of the test set; None when ``test.n`` is 0."""
        return self._set_spec(self.test.n, self.test.seed) if self.test.n else None

    def _set_spec(self, n: int, seed: int) -> dict[str, Any]:
        rl_data = rl_config(self, policy="default", verifier="v", heldout="h").data
        level, synth = rl_data.synth_level, rl_data.synth.set_keys()
        return {"n": n, "seed": seed, "level": level, "synth": synth, "task": task_fingerprint(level, synth)}



def rl_config(cfg: PipelineConfig, *, policy: str, verifier: str | None, heldout: str, **overrides: Any):
    """The :class:`mapo.train.rl.RLConfig` of the RL stage, with the pipeline's stages filled in."""
    from mapo.core.config import apply_overrides

    # The periodic evaluation inside `mapo train` reads the same held-out set (all of it unless rl.data.n_eval says).
    rl = to_dict(cfg.rl)  # the keys the pipeline config sets
    data = {"n_eval": cfg.data.n, **to_dict(cfg.rl.data), "eval_source": heldout}
    base = {**rl, "policy": policy, "verifier": verifier, "data": data, "threads": cfg.threads}
    return from_dict(RLConfig, apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))


def load_pipeline_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    from mapo.core.config import load_config

    return load_config(PipelineConfig, path, overrides)


__all__ = [
    "HeldoutConfig", "PipelineConfig", "RLOverrides", "SearchCheckConfig", "TestSetConfig", "WarmStartConfig", "load_pipeline_config",
    "rl_config",
    "task_fingerprint",
]
