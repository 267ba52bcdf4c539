"""Reading finished compare runs and comparing their arms: means over seeds, paired differences, goals.

A run directory is what ``mapo train`` then ``mapo eval`` wrote (``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``eval/metrics.json``, ``eval/predictions.jsonl``) plus :data:`ARM_FILE`. The metric
definitions are in :mod:`mapo.pipelines.compare`'s docstring and ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapo.pipelines.demo_summary import TEST_EVAL

# (key, label, source, higher is better; None: neither, context): the RESULTS table, in order.
RESULT_METRICS = (
    ("accuracy", "held-out accuracy", "eval", True),
    ("crop_iou_mean", "crop IoU", "eval", True),
    ("crop_hit_rate", "crop hit rate (IoU ≥ 0.5)", "eval", True),
    ("first_crop_hit_rate", "first-zoom hit rate (no crop = miss)", "eval", True),
    ("found_rate", "found rate (some crop hits)", "eval", True),
    ("recovered_rate", "recovered rate (first crop missed, a later one hit)", "eval", True),
    ("tool_calls_per_sample", "tool calls / sample", "eval", None),
    ("semantic_score_mean", "semantic score", "eval", True),
    ("train_hit_rate", "sampled first-zoom hit (training rollouts, last quarter of the steps)", "train", True),
    ("grad_var_bootstrap", "gradient variance (bootstrap)", "train", False),
    ("grad_noise_to_signal", "gradient noise-to-signal (var / proj², median)", "train", False),
    ("step_time_s", "step time (s, excl. bootstrap)", "train", False),
    ("response_tokens", "generated tokens / trajectory (training)", "train", None),
    ("verifier_time_s", "verifier time per step (s)", "train", False),
)
# Training curves drawn in the PNG: (metrics.jsonl key, panel title).
CURVES = (
    ("reward_mean", "training reward"),
    ("accuracy", "training accuracy"),
    ("hit_rate", "training first-zoom hit rate"),
    ("eval/accuracy", "validation accuracy (periodic greedy eval)"),
    ("grad_var_bootstrap", "gradient variance (bootstrap)"),
    ("step_time_s", "step time excl. bootstrap (s)"),
)

STEP_TIME_GOAL = 1.15  # MAPO's step may cost at most this times GRPO's

START_DIR = "start"  # OUT/start/eval (validation set), OUT/start/eval_test (test set): the warm start evaluated
ARM_FILE = "arm.json"  # {"arm", "overrides"}, written into a run directory once it is trained and evaluated
SETS_FILE = "sets.json"  # OUT/sets.json: {"validation": {n, seed, path}, "test": {n, seed, path} | null}


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """What the results need from one finished run: arm, seed, final eval metrics, per-step means, curves.

    Raises ValueError naming the missing file when ``run_dir`` is not a finished, evaluated run.
    """
    import yaml

    from mapo.train.metrics_log import read_metrics

    run_dir = Path(run_dir)
    needed = ("config.yaml", "metrics.jsonl", "summary.json", "eval/metrics.json")
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a finished, evaluated compare run: missing {', '.join(missing)}")
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if "time_step" in r]
    tools = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))["tools"]
    values = {key: tools.get(key) for key, _, source, _ in RESULT_METRICS if source == "eval"}
    # What RL optimises: the hit rate of the sampled rollouts (fresh prompts each step), late in training.
    values["train_hit_rate"] = _mean([r.get("hit_rate") for r in train_rows[len(train_rows) * 3 // 4:]])
    values["grad_var_bootstrap"] = _mean([r.get("grad_var_bootstrap") for r in train_rows])
    values["grad_noise_to_signal"] = _median([r["grad_var_bootstrap"] / r["grad_proj"] ** 2 for r in train_rows
                                              if "grad_var_bootstrap" in r and r.get("grad_proj")])
    values["step_time_s"] = _mean([r["time_step"] - r.get("time_bootstrap", 0.0) for r in train_rows])
    values["verifier_time_s"] = _mean([r.get("time_verifier") for r in train_rows])
    values["response_tokens"] = _mean([r.get("response_tokens_mean") for r in train_rows])
    for r in train_rows:  # a derived per-step series, for the step-time curve
        r["step_time_s"] = r["time_step"] - r.get("time_bootstrap", 0.0)
    curves = {key: [(r["step"], r[key]) for r in rows if key in r] for key, _ in CURVES}
    arm_file = run_dir / ARM_FILE
    arm_spec = json.loads(arm_file.read_text(encoding="utf-8")) if arm_file.is_file() else {}
    arm = arm_spec.get("arm", config["advantage"]["estimator"])
    test = None
    if (run_dir / TEST_EVAL / "metrics.json").is_file():
        test_tools = json.loads((run_dir / TEST_EVAL / "metrics.json").read_text(encoding="utf-8"))["tools"]
        test = {"values": {key: test_tools.get(key) for key, _, source, _ in RESULT_METRICS if source == "eval"},
                "n_eval": test_tools.get("n"), "per_sample": per_sample_outcomes(run_dir / TEST_EVAL / "predictions.jsonl")}
    return {
        "run_dir": str(run_dir), "arm": arm, "overrides": list(arm_spec.get("overrides", [])), "seed": int(config["seed"]),
        "steps": int(config["steps"]), "values": values, "curves": curves, "n_eval": tools.get("n"),
        "config": config, "per_sample": per_sample_outcomes(run_dir / "eval" / "predictions.jsonl"), "test": test,
    }


def on_test_set(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` as seen on the test set: evaluation values, sample outcomes and size from ``RUN/eval_test``.

    Training-side values (gradient variance, step time, ...) are unchanged. Every run must have a
    test evaluation (:func:`check_same_sets` makes sure).
    """
    return [{**r, "values": {**r["values"], **r["test"]["values"]}, "per_sample": r["test"]["per_sample"],
             "n_eval": r["test"]["n_eval"]} for r in runs]


def per_sample_outcomes(path: Path) -> dict[str, tuple[bool, bool, bool]]:
    """Held-out sample id -> (answered right, first valid crop hits, some valid crop hits); {} without the file.

    Hits are :func:`mapo.algo.crop_iou.first_zoom_hit` and :func:`mapo.algo.crop_iou.found` (IoU >= 0.5).
    """
    from mapo.algo.crop_iou import first_zoom_hit, found
    from mapo.metrics.records import read_jsonl

    if not path.is_file():
        return {}
    return {r.id: (bool(r.correct), first_zoom_hit(r.iou), found(r.iou)) for r in read_jsonl(path)}


def check_same_sets(runs: Sequence[dict[str, Any]]) -> None:
    """Refuse runs whose validation or test sample ids differ, or of which only some have a test evaluation."""
    reference = runs[0]
    for r in runs[1:]:
        if (r["test"] is None) != (reference["test"] is None):
            has, lacks = (r, reference) if reference["test"] is None else (reference, r)
            raise ValueError(
                f"{has['run_dir']} was evaluated on a test set and {lacks['run_dir']} was not; re-run the compare so "
                "every arm uses the same validation and test sets"
            )
        pairs = [("validation", r["per_sample"], reference["per_sample"])]
        if r["test"] is not None:
            pairs.append(("test", r["test"]["per_sample"], reference["test"]["per_sample"]))
        for which, mine, theirs in pairs:
            if set(mine) != set(theirs):
                only = sorted(set(mine) ^ set(theirs))[:3]
                raise ValueError(
                    f"{r['run_dir']} and {reference['run_dir']} were evaluated on different {which} sets "
                    f"(e.g. {only}); re-run the compare so every arm uses the same validation and test sets"
                )


check_same_heldout = check_same_sets  # the earlier name


# (index in a per-sample tuple, label): the differences tested against the baseline.
PAIRED_METRICS = ((0, "held-out accuracy"), (1, "first-zoom hit rate"), (2, "found rate"))


def paired_differences(runs: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each arm minus the baseline, paired by seed, for :data:`PAIRED_METRICS`.

    Two intervals: ``seed_ci`` is the 95% t-interval of the per-seed differences
    (df = seeds - 1: the between-run noise, wide with 3 seeds) and ``sample_ci``
    the 95% normal interval over every (seed, held-out sample) pair (the
    evaluation noise given these runs). ``p`` is the paired t-test over seeds.
    """
    from scipy import stats

    by = {(r["arm"], r["seed"]): r for r in runs}
    out = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        if arm == baseline:
            continue
        seeds = sorted(s for a, s in by if a == arm and (baseline, s) in by)
        for index, label in PAIRED_METRICS:
            per_seed, per_sample = [], []
            for s in seeds:
                a, b = by[(arm, s)]["per_sample"], by[(baseline, s)]["per_sample"]
                d = [float(a[i][index]) - float(b[i][index]) for i in sorted(a) if i in b]
                if d:
                    per_seed.append(float(np.mean(d)))
                    per_sample += d
            if not per_seed:
                continue
            mean = float(np.mean(per_seed))
            row = {"arm": arm, "metric": label, "diff": mean, "seeds": len(per_seed), "pairs": len(per_sample),
                   "seed_ci": None, "sample_ci": None, "p": None}
            if len(per_seed) > 1:
                sd = float(np.std(per_seed, ddof=1))
                row["seed_ci"] = float(stats.t.ppf(0.975, len(per_seed) - 1) * sd / math.sqrt(len(per_seed)))
                flat = sd < 1e-12  # identical per-seed differences: the t statistic is undefined
                row["p"] = (1.0 if abs(mean) < 1e-12 else 0.0) if flat else float(stats.ttest_1samp(per_seed, 0.0).pvalue)
            if len(per_sample) > 1:
                row["sample_ci"] = float(1.96 * np.std(per_sample, ddof=1) / math.sqrt(len(per_sample)))
            out.append(row)
    return out


def oracle_arm(runs: Sequence[dict[str, Any]]) -> str | None:
    """The first arm trained with ``semantic_target: oracle_iou`` (the per-turn credit bound), or None."""
    return next((r["arm"] for r in runs if r["config"].get("semantic_target") == "oracle_iou"), None)


def oracle_fractions(
    runs: Sequence[dict[str, Any]], baseline: str, oracle: str, *, resamples: int = 4000, seed: int = 0
) -> list[dict[str, Any]]:
    """How much of the oracle arm's gain over the baseline each other arm recovers, per :data:`PAIRED_METRICS`.

    ``fraction = mean_s(arm_s - base_s) / mean_s(oracle_s - base_s)`` over the seeds s that all three
    arms share (per-seed rates on the same samples). The 95% interval resamples the seeds with
    replacement (paired: one draw picks a seed's three runs together) and takes the 2.5 / 97.5
    percentiles of the ratio. ``defined`` is False when the oracle's own gain is not above zero
    (its mean gain <= 0, or its seed t-interval reaches 0): a fraction of no gain means nothing,
    and the row says so instead of printing a ratio.
    """
    from scipy import stats

    by = {(r["arm"], r["seed"]): r for r in runs}
    arms = [a for a in dict.fromkeys(r["arm"] for r in runs) if a not in (baseline, oracle)]
    rng = np.random.default_rng(seed)
    out = []
    for arm in arms:
        seeds = sorted(s for a, s in by if a == arm and (baseline, s) in by and (oracle, s) in by)
        if not seeds:
            continue
        for index, label in PAIRED_METRICS:
            def rate(a: str, s: int) -> float:
                outcomes = by[(a, s)]["per_sample"]
                return float(np.mean([float(v[index]) for v in outcomes.values()]))

            gain = np.array([rate(arm, s) - rate(baseline, s) for s in seeds])  # (S,)
            bound = np.array([rate(oracle, s) - rate(baseline, s) for s in seeds])  # (S,)
            row = {"arm": arm, "metric": label, "seeds": len(seeds), "gain": float(gain.mean()),
                   "oracle_gain": float(bound.mean()), "oracle_ci": None, "fraction": None, "ci": None, "defined": False}
            if len(seeds) > 1:
                row["oracle_ci"] = float(stats.t.ppf(0.975, len(seeds) - 1) * bound.std(ddof=1) / math.sqrt(len(seeds)))
            row["defined"] = bool(bound.mean() > 0 and (row["oracle_ci"] is None or bound.mean() - row["oracle_ci"] > 0))
            if row["defined"]:
                row["fraction"] = float(gain.mean() / bound.mean())
                draws = rng.integers(len(seeds), size=(resamples, len(seeds)))  # (R, S) seed indices
                num, den = gain[draws].mean(axis=1), bound[draws].mean(axis=1)
                ratios = num[den > 0] / den[den > 0]
                if ratios.size:
                    row["ci"] = (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))
            out.append(row)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(kept)) if kept else None


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``{arm: {metric: {"mean", "std", "n"}}}`` over seeds; std is the sample std (ddof 1), None for one seed."""
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        per = {}
        for key, *_ in RESULT_METRICS:
            vals = [r["values"][key] for r in runs if r["arm"] == arm and r["values"][key] is not None]
            per[key] = {
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                "n": len(vals),
            }
        out[arm] = per
    return out


def goals(agg: dict[str, Any], baseline: str = "grpo", method: str = "mapo") -> list[tuple[str, str, bool | None]]:
    """The four goals, checked on the means: (goal, measured, met); met is None when undefined."""
    if baseline not in agg or method not in agg:
        return []

    def m(arm: str, key: str) -> float | None:
        return agg[arm][key]["mean"]

    out = []
    for key, text, better in (
        ("accuracy", "held-out accuracy ≥ GRPO's", lambda a, b: a >= b),
        ("crop_iou_mean", "crops better grounded (IoU above GRPO's)", lambda a, b: a > b),
        ("grad_var_bootstrap", "gradient-variance estimate below GRPO's", lambda a, b: a < b),
        ("step_time_s", f"step time ≤ {STEP_TIME_GOAL} × GRPO's", lambda a, b: a <= STEP_TIME_GOAL * b),
    ):
        a, b = m(method, key), m(baseline, key)
        if a is None or b is None:
            out.append((text, "undefined (no data)", None))
            continue
        ratio = f" (ratio {a / b:.2f})" if b else ""
        out.append((text, f"{method} {a:.4g} vs {baseline} {b:.4g}{ratio}", bool(better(a, b))))
    return out
