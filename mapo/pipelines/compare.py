"""Arms (GRPO, MAPO and variants) from the same warm start with the same budget: ``mapo experiment compare``.

An arm is a name and a list of overrides of the RL recipe (``configs/compare.yaml``: ``grpo``,
``mapo``, ``mapo_label``, ``mapo_beta1``); the first is the baseline. For every seed and every
arm, one ``mapo train`` run starts from the demo
pipeline's cached stages (held-out data, verifier, warm start; :mod:`mapo.pipelines.demo`)
with the same steps, batch and optimiser; then its final policy is evaluated
greedily with the verifier (``mapo eval``) on the validation set (``pipeline.data``: the RL
run's periodic evaluation, where settings are chosen) and, once, on the test set
(``pipeline.test``: nothing is chosen on it), so every arm is scored by the same code on the
same samples. The document's headline table and paired differences are on the test set; the
validation figures are shown separately, labelled (without a test set, ``test.n: 0``, the
document says its figures are on the validation set). :func:`write_results` (:mod:`.compare_doc`) turns the
run directories into ``docs/RESULTS.md`` (mean ± std over seeds) and a PNG of the
curves; it reads only what the runs wrote, so the document can be regenerated from
existing runs (``--report-only``) and every number in it comes from a run.

What is measured, per run (formulas of the logged keys: ``docs/metrics.md``):

- held-out accuracy, crop IoU, crop hit rate, semantic score: the final policy's
  ``mapo eval`` metrics (``RUN/eval/metrics.json``, ``tools``);
- gradient variance: the mean over logged steps of ``grad_var_bootstrap`` (the
  bootstrap variance of the policy gradient projected on one fixed direction), and
  a scale-free version, the median over steps of ``grad_var_bootstrap / grad_proj²``
  (variance over the squared batch projection: MAPO's advantage adds ``β·C`` to
  GRPO's, which changes the gradient's scale, so raw variances alone mislead);
- step time: the mean over steps of ``time_step - time_bootstrap`` (rollout,
  verifier, advantages and update; the bootstrap is a diagnostic every arm pays
  equally and is left out), and the verifier's share ``time_verifier``.

Choices that are ours: GRPO runs without a verifier (``grpo_verifier: false``), as a
GRPO user would, so the step-time ratio prices MAPO's verifier; the std is the
sample std (ddof 1) over seeds; a seed changes the run's sampling and prompt order,
not the warm start or the held-out set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.config import knob
from mapo.pipelines.compare_doc import plot_curves, results_markdown, write_results
from mapo.pipelines.compare_stats import (
    ARM_FILE,
    SETS_FILE,
    START_DIR,
    aggregate,
    goals,
    oracle_fractions,
    paired_differences,
    per_sample_outcomes,
    read_run,
)
from mapo.pipelines.demo_config import PipelineConfig

# The statistics (compare_stats) and the document (compare_doc) are re-exported: ``mapo.pipelines.compare``
# is the one import for a user of the compare.


def _default_arms() -> dict[str, list[str]]:
    return {"grpo": ["advantage.estimator=grpo"], "mapo": ["advantage.estimator=mapo"]}


@dataclass(frozen=True)
class CompareConfig:
    """``mapo experiment compare``: arms (RL recipes differing by a few overrides) over seeds."""

    pipeline: PipelineConfig = knob(factory=PipelineConfig, help="stages shared with `mapo demo` (data, verifier, "
                                    "warm start) and the RL recipe (pipeline.rl) every run uses")
    arms: dict = knob(factory=_default_arms, help="arm name -> overrides of pipeline.rl (`key=value` strings); the "
                      "first arm is the baseline every other one is compared with")
    seeds: int = knob(3, "runs per arm, with seeds first_seed..first_seed+seeds-1")
    first_seed: int = knob(0, "the first seed (split one compare over processes: seeds=2 first_seed=0 and seeds=1 "
                           "first_seed=2 into the same --out, then --report-only with seeds=3)")
    steps: int = knob(40, "RL steps of every run (the same budget for every arm)")
    grpo_verifier: bool = knob(False, "load the verifier in runs whose estimator needs none (only for logging semantic scores)")

    def __post_init__(self) -> None:
        from mapo.algo.advantage import list_estimators

        if self.seeds < 1 or self.steps < 1:
            raise ValueError(f"seeds and steps must be >= 1, got {self.seeds} and {self.steps}")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if not isinstance(self.arms, dict) or len(self.arms) < 2:
            raise ValueError(f"arms must map >= 2 arm names to override lists, got {self.arms!r}")
        for name, overrides in self.arms.items():
            if not (isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum()):
                raise ValueError(f"arm name {name!r} must be letters, digits, '_' or '-' (it names a directory)")
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise ValueError(f"arm {name!r}: overrides must be a list of 'key=value' strings, got {overrides!r}")
            for o in overrides:
                key, value = o.split("=", 1)
                if key == "advantage.estimator" and value not in list_estimators():
                    raise ValueError(f"arm {name!r}: unknown estimator {value!r}; choose from {list_estimators()}")

    @property
    def baseline(self) -> str:
        return next(iter(self.arms))

    @property
    def seed_range(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)


# ----------------------------------------------------------------------------- running


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def run_compare(
    cfg: CompareConfig,
    out: str | Path,
    *,
    progress: bool | str = True,
    log: Callable[[str], None] = print,
    forced_turns: Callable | None = None,
) -> list[Path]:
    """Train and evaluate every (seed, arm) run under ``out``; finished runs are read back. Returns run dirs.

    Seeds are the outer loop, so an interrupted experiment has complete pairs to compare.
    """
    import torch

    from mapo.pipelines.demo import (
        eval_config,
        evaluate_stage,
        heldout_stage,
        test_stage,
        verifier_stage,
        warmstart_stage,
    )
    from mapo.pipelines.demo_config import rl_config
    from mapo.pipelines.demo_summary import TEST_EVAL
    from mapo.train.rl import needs_semantic, needs_verifier, train

    out = Path(out)
    pipe = cfg.pipeline
    if pipe.threads:
        torch.set_num_threads(pipe.threads)
    heldout, _ = heldout_stage(pipe, log)
    test, _ = test_stage(pipe, log)
    write_sets(out, pipe, heldout, test)
    verifier, _ = verifier_stage(pipe, log, progress)
    policy, _, _ = warmstart_stage(pipe, log, progress)
    # The warm start itself, scored like every run: the column every arm's change is read against.
    start_cfg = rl_config(pipe, verifier=str(verifier), policy=str(policy), heldout=str(heldout), steps=cfg.steps)
    evaluate_stage(Path(policy), heldout, verifier, out / START_DIR / "eval", eval_config(pipe, start_cfg))
    if test is not None:
        evaluate_stage(Path(policy), test, verifier, out / START_DIR / TEST_EVAL, eval_config(pipe, start_cfg))
    dirs = []
    for seed in cfg.seed_range:
        for arm, arm_overrides in cfg.arms.items():
            run_dir = run_dir_of(out, arm, seed)
            same = dict(policy=str(policy), heldout=str(heldout), steps=cfg.steps, seed=seed)
            rl_cfg = _arm_config(rl_config(pipe, verifier=str(verifier), **same), arm_overrides)
            if not (cfg.grpo_verifier or (needs_semantic(rl_cfg.advantage) and needs_verifier(rl_cfg.semantic_target))):
                rl_cfg = _arm_config(rl_cfg, ["verifier=null"])
            resume = (run_dir / "run.json").is_file()
            log(f"{'resuming' if resume else 'training'} {arm} seed {seed}: {run_dir}")
            train(rl_cfg, run_dir, resume=resume, progress=progress, forced_turns=forced_turns)
            evaluate_stage(run_dir / "final", heldout, verifier, run_dir / "eval", eval_config(pipe, rl_cfg))
            if test is not None:  # once, on the final policy: nothing is chosen on the test set
                evaluate_stage(run_dir / "final", test, verifier, run_dir / TEST_EVAL, eval_config(pipe, rl_cfg))
            (run_dir / ARM_FILE).write_text(json.dumps({"arm": arm, "overrides": arm_overrides}) + "\n", encoding="utf-8")
            dirs.append(run_dir)
    return dirs


def write_sets(out: Path, pipe: PipelineConfig, heldout: Path, test: Path | None) -> None:
    """``OUT/sets.json``: which validation and test sets the runs under ``out`` are scored on (the document's labels)."""
    sets = {"validation": {"n": pipe.data.n, "seed": pipe.data.seed, "path": str(heldout)},
            "test": {"n": pipe.test.n, "seed": pipe.test.seed, "path": str(test)} if test is not None else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / SETS_FILE).write_text(json.dumps(sets, indent=1) + "\n", encoding="utf-8")


def _arm_config(rl_cfg: Any, overrides: list[str]) -> Any:
    """``rl_cfg`` with an arm's ``key=value`` overrides applied."""
    from mapo.core.config import apply_overrides, from_dict, to_dict
    from mapo.train.rl import RLConfig

    return from_dict(RLConfig, apply_overrides(to_dict(rl_cfg), overrides))


def existing_runs(out: str | Path, cfg: CompareConfig) -> list[Path]:
    """Run directories of ``cfg`` under ``out`` that are finished and evaluated (for ``--report-only``).

    With a test set (``pipeline.test.n > 0``) a run counts once its test evaluation is written too.
    """
    from mapo.pipelines.demo_summary import TEST_EVAL

    dirs = [run_dir_of(Path(out), a, s) for s in cfg.seed_range for a in cfg.arms]
    needed = ["summary.json", "eval/metrics.json"] + ([f"{TEST_EVAL}/metrics.json"] if cfg.pipeline.test.n else [])
    return [d for d in dirs if all((d / name).is_file() for name in needed)]


__all__ = ["CompareConfig", "aggregate", "existing_runs", "goals", "plot_curves", "read_run", "results_markdown",
           "oracle_fractions", "paired_differences", "per_sample_outcomes", "run_compare", "write_results"]
