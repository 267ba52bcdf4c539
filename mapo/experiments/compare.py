"""Arms (GRPO, MAPO and variants) from the same warm start with the same budget: ``mapo experiment compare``.

An arm is a name and a list of overrides of the RL recipe (``configs/compare.yaml``: ``grpo``,
``mapo``, ``mapo_label``, ``mapo_beta1``); the first is the baseline. For every seed and every
arm, one ``mapo train`` run starts from the demo
pipeline's cached stages (held-out data, verifier, warm start; :mod:`mapo.pipeline`)
with the same steps, batch and optimiser; then its final policy is evaluated
greedily on the held-out set with the verifier (``mapo eval``), so every arm
is scored by the same code on the same samples. :func:`write_results` turns the
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

import datetime as _dt
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapo.config import knob
from mapo.pipeline import PipelineConfig

# (key, label, source, higher is better; None: neither, context): the RESULTS table, in order.
RESULT_METRICS = (
    ("accuracy", "held-out accuracy", "eval", True),
    ("crop_iou_mean", "crop IoU", "eval", True),
    ("crop_hit_rate", "crop hit rate (IoU ≥ 0.5)", "eval", True),
    ("first_crop_hit_rate", "first-zoom hit rate (no crop = miss)", "eval", True),
    ("tool_calls_per_sample", "tool calls / sample", "eval", None),
    ("semantic_score_mean", "semantic score", "eval", True),
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
    ("eval/accuracy", "held-out accuracy (periodic greedy eval)"),
    ("grad_var_bootstrap", "gradient variance (bootstrap)"),
    ("step_time_s", "step time excl. bootstrap (s)"),
)
LOG_SCALE = ("grad_var_bootstrap",)
STEP_TIME_GOAL = 1.15


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
        from mapo.advantage import list_estimators

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


START_DIR = "start"  # OUT/start/eval: the warm start evaluated on the held-out set
ARM_FILE = "arm.json"  # {"arm", "overrides"}, written into a run directory once it is trained and evaluated


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

    from mapo.pipeline import eval_config, evaluate_stage, heldout_stage, rl_config, verifier_stage, warmstart_stage
    from mapo.train.rl import needs_semantic, train

    out = Path(out)
    pipe = cfg.pipeline
    if pipe.threads:
        torch.set_num_threads(pipe.threads)
    heldout, _ = heldout_stage(pipe, log)
    verifier, _ = verifier_stage(pipe, log, progress)
    policy, _, _ = warmstart_stage(pipe, log, progress)
    # The warm start itself, scored like every run: the column every arm's change is read against.
    start_cfg = rl_config(pipe, verifier=str(verifier), policy=str(policy), heldout=str(heldout), steps=cfg.steps)
    evaluate_stage(Path(policy), heldout, verifier, out / START_DIR / "eval", eval_config(pipe, start_cfg))
    dirs = []
    for seed in cfg.seed_range:
        for arm, arm_overrides in cfg.arms.items():
            run_dir = run_dir_of(out, arm, seed)
            same = dict(policy=str(policy), heldout=str(heldout), steps=cfg.steps, seed=seed)
            rl_cfg = _arm_config(rl_config(pipe, verifier=str(verifier), **same), arm_overrides)
            if not (cfg.grpo_verifier or needs_semantic(rl_cfg.advantage)):
                rl_cfg = _arm_config(rl_cfg, ["verifier=null"])
            resume = (run_dir / "run.json").is_file()
            log(f"{'resuming' if resume else 'training'} {arm} seed {seed}: {run_dir}")
            train(rl_cfg, run_dir, resume=resume, progress=progress, forced_turns=forced_turns)
            evaluate_stage(run_dir / "final", heldout, verifier, run_dir / "eval", eval_config(pipe, rl_cfg))
            (run_dir / ARM_FILE).write_text(json.dumps({"arm": arm, "overrides": arm_overrides}) + "\n", encoding="utf-8")
            dirs.append(run_dir)
    return dirs


def _arm_config(rl_cfg: Any, overrides: list[str]) -> Any:
    """``rl_cfg`` with an arm's ``key=value`` overrides applied."""
    from mapo.config import apply_overrides, from_dict, to_dict
    from mapo.train.rl import RLConfig

    return from_dict(RLConfig, apply_overrides(to_dict(rl_cfg), overrides))


# ----------------------------------------------------------------------------- reading runs


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """What the results need from one finished run: arm, seed, final eval metrics, per-step means, curves.

    Raises ValueError naming the missing file when ``run_dir`` is not a finished, evaluated run.
    """
    import yaml

    from mapo.train.common import read_metrics

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
    arm = json.loads(arm_file.read_text(encoding="utf-8"))["arm"] if arm_file.is_file() else config["advantage"]["estimator"]
    return {
        "run_dir": str(run_dir), "arm": arm, "seed": int(config["seed"]),
        "steps": int(config["steps"]), "values": values, "curves": curves, "n_eval": tools.get("n"),
        "config": config, "per_sample": per_sample_outcomes(run_dir / "eval" / "predictions.jsonl"),
    }


def per_sample_outcomes(path: Path) -> dict[str, tuple[bool, bool]]:
    """Held-out sample id -> (answered right, first valid crop hits a target at IoU >= 0.5); {} without the file."""
    from mapo.records import read_jsonl

    if not path.is_file():
        return {}
    out = {}
    for r in read_jsonl(path):
        first = r.iou[0] if r.iou else None
        out[r.id] = (bool(r.correct), first is not None and first >= 0.5)
    return out


def check_same_heldout(runs: Sequence[dict[str, Any]]) -> None:
    """Refuse runs whose held-out sample ids differ: their numbers would not compare."""
    reference = runs[0]
    for r in runs[1:]:
        if set(r["per_sample"]) != set(reference["per_sample"]):
            only = sorted(set(r["per_sample"]) ^ set(reference["per_sample"]))[:3]
            raise ValueError(
                f"{r['run_dir']} and {reference['run_dir']} were evaluated on different held-out sets "
                f"(e.g. {only}); re-run the compare so every arm uses the same one"
            )


# (index in a per-sample tuple, label): the differences tested against the baseline.
PAIRED_METRICS = ((0, "held-out accuracy"), (1, "first-zoom hit rate"))


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


# ----------------------------------------------------------------------------- the document


def _pm(stat: dict[str, Any], runs: int) -> str:
    """``mean ± std`` in one format chosen by the mean's size; ``(n=k)`` when only k of ``runs`` runs define it."""
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "n/a"
    spec = ".3e" if mean != 0 and abs(mean) < 1e-3 else ".3f"
    text = f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"
    return text + (f" (n={stat['n']})" if stat["n"] < runs else "")


def goals(agg: dict[str, Any], baseline: str = "grpo", method: str = "mapo") -> list[tuple[str, str, bool | None]]:
    """The issue's four goals, checked on the means: (goal, measured, met); met is None when undefined."""
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


def results_markdown(
    runs: Sequence[dict[str, Any]], command: str, meta: dict[str, Any], plot: str | None,
    start: dict[str, Any] | None = None,
) -> str:
    """The text of ``docs/RESULTS.md`` from the runs' own files (see :func:`read_run`).

    ``start``: the warm start's eval ``tools`` metrics (``OUT/start/eval/metrics.json``), shown
    as a first column when given.
    """
    agg = aggregate(runs)
    arms = list(agg)
    seeds = sorted({r["seed"] for r in runs})
    steps = sorted({r["steps"] for r in runs})
    cfg = runs[0]["config"]
    lines = [
        "# Results: MAPO vs GRPO on the embedded synthetic task", "",
        "<!-- GENERATED by the command below; do not edit by hand. -->", "",
        f"Generated by `{command}` on {meta['date']} ({meta['machine']}; torch {meta['torch']}, "
        f"{meta['threads']} CPU thread(s)); total wall time of the runs read: {meta['wall_min']:.1f} min.", "",
        f"Setup: every run starts from the same warm start (`{_shown_path(cfg['policy'])}`), for {', '.join(map(str, steps))} steps "
        f"of {cfg['prompts_per_step']} prompts × G={cfg['rollout']['group_size']} trajectories, lr {cfg['optim']['lr']}, "
        f"seeds {', '.join(map(str, seeds))}. Held-out: {runs[0]['n_eval']} synthetic samples of level "
        f"`{cfg['data']['synth_level']}`, greedy, scored by `mapo eval` with the verifier `{_shown_path(meta['verifier'])}`. "
        "Mean ± sample std over seeds; `(n=k)`: only k runs define the metric (e.g. crop IoU of a policy that "
        "made no crop). `n/a`: no run defines it." + (" The runs were made by the same command without "
        "`--report-only`." if "--report-only" in command else ""), "",
        "| metric | " + ("warm start | " if start else "") + " | ".join(arms) + " |",
        "|---|" + ("---|" if start else "") + "---|" * len(arms),
    ]
    for key, label, source, higher in RESULT_METRICS:
        arrow = {True: " ↑", False: " ↓", None: ""}[higher]
        counts = {a: sum(r["arm"] == a for r in runs) for a in arms}
        first = ""
        if start:
            value = start.get(key) if source == "eval" else None
            first = ("–" if value is None else f"{value:.3f}") + " | "
        lines.append(f"| {label}{arrow} | " + first + " | ".join(_pm(agg[a][key], counts[a]) for a in arms) + " |")
    diffs = paired_differences(runs, arms[0])
    if diffs:
        lines += ["", f"## Differences from `{arms[0]}`, paired by seed", "",
                  "Δ is the mean over seeds of (arm − baseline) on the same held-out samples. *seed 95% CI*: "
                  "t-interval of the per-seed differences (run-to-run noise); *sample 95% CI*: normal interval over "
                  "every (seed, sample) pair (evaluation noise only); *p*: paired t-test over seeds.", "",
                  "| arm | metric | Δ | seed 95% CI | sample 95% CI | p | seeds |", "|---|---|---|---|---|---|---|"]

        def num(v, fmt):
            return "n/a" if v is None else fmt.format(v)

        for d in diffs:
            lines.append(f"| {d['arm']} | {d['metric']} | {d['diff']:+.3f} | {num(d['seed_ci'], '± {:.3f}')} | "
                         f"{num(d['sample_ci'], '± {:.3f}')} | {num(d['p'], '{:.3f}')} | {d['seeds']} |")
    checked = goals(agg, arms[0], "mapo" if "mapo" in agg else arms[1])
    if checked:
        lines += ["", "## Goals, checked on the means", "",
                  "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {v} | {'n/a' if ok is None else ('yes' if ok else 'no')} |" for g, v, ok in checked]
    lines += ["", "## Per run", "", "| arm | seed | " + " | ".join(label for _, label, _, _ in RESULT_METRICS) + " | run |",
              "|---|---|" + "---|" * (len(RESULT_METRICS) + 1)]
    for r in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        cells = ["n/a" if r["values"][k] is None else f"{r['values'][k]:.4g}" for k, *_ in RESULT_METRICS]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + f" | `{r['run_dir']}` |")
    if plot:
        lines += ["", "## Curves", "", f"![training curves]({plot})", "",
                  "Mean over seeds (line) and min–max over seeds (band); `eval/accuracy` is the periodic greedy "
                  "held-out evaluation inside `mapo train`."]
    lines += ["", "## How to read this", "",
              "- Gradient variance is the bootstrap estimate of `docs/metrics.md` (projection on one fixed random "
              "direction, the same for every arm). It scales with the advantages' magnitude, and MAPO's "
              "advantage adds β·C to GRPO's, so a lower number is not free.",
              "- Step time excludes the bootstrap diagnostic; GRPO runs without a verifier unless the command says "
              "otherwise. The verifier's own cost is the row `verifier time per step`; the rest of a step-time "
              "difference is behaviour (a policy that stops zooming generates fewer tokens: see `generated tokens / "
              "trajectory`).",
              "- The held-out semantic score is `mapo eval`'s (the description after each view against its crop) for "
              "every arm, one yardstick, whatever the arm's training target.",
              "- With few seeds and a small held-out set, differences smaller than the std are not evidence either way; "
              "the seed 95% interval of a difference is the power statement: a difference smaller than it could not "
              "have been detected."]
    return "\n".join(lines) + "\n"


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it (documents stay machine-neutral)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def plot_curves(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A PNG with one panel per :data:`CURVES` key: mean over seeds per arm, min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, CURVES):
        lowest = math.inf
        for arm in dict.fromkeys(r["arm"] for r in runs):
            series = [dict(r["curves"].get(key, [])) for r in runs if r["arm"] == arm]
            steps = sorted(set().union(*series)) if series else []
            steps = [s for s in steps if all(s in s_ for s_ in series)]  # steps every seed logged
            if not steps:
                continue
            values = np.array([[s_[s] for s in steps] for s_ in series])  # (seeds, steps)
            lowest = min(lowest, float(values.min()))
            line, = ax.plot(steps, values.mean(axis=0), marker="o", markersize=3, label=arm)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
        if key in LOG_SCALE and ax.lines and lowest > 0:  # a log axis cannot show zeros
            ax.set_yscale("log")
            title += " (log scale)"
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_results(
    run_dirs: Sequence[str | Path], doc: str | Path, img_dir: str | Path, command: str, *, verifier: str = "",
) -> Path:
    """Read ``run_dirs``, write the curves PNG into ``img_dir`` and the results document ``doc``; return ``doc``."""
    import torch

    if not run_dirs:
        raise ValueError("no run directories to summarise")
    runs = [read_run(d) for d in run_dirs]
    check_same_heldout(runs)
    start_file = Path(run_dirs[0]).parent.parent / START_DIR / "eval" / "metrics.json"
    start = json.loads(start_file.read_text(encoding="utf-8"))["tools"] if start_file.is_file() else None
    doc, img_dir = Path(doc), Path(img_dir)
    png = plot_curves(runs, img_dir / "compare_curves.png")
    try:
        rel = png.resolve().relative_to(doc.resolve().parent).as_posix()
    except ValueError:
        rel = str(png.resolve())
    wall = sum(json.loads((Path(r["run_dir"]) / "summary.json").read_text())["wall_s"] for r in runs)
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores visible",
        "torch": torch.__version__, "threads": runs[0]["config"].get("threads") or torch.get_num_threads(),
        "wall_min": wall / 60,
        "verifier": verifier or next((r["config"]["verifier"] for r in runs if r["config"].get("verifier")), "n/a"),
    }
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(results_markdown(runs, command, meta, rel, start), encoding="utf-8")
    return doc


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def existing_runs(out: str | Path, cfg: CompareConfig) -> list[Path]:
    """Run directories of ``cfg`` under ``out`` that are finished and evaluated (for ``--report-only``)."""
    dirs = [run_dir_of(Path(out), a, s) for s in cfg.seed_range for a in cfg.arms]
    return [d for d in dirs if (d / "summary.json").is_file() and (d / "eval" / "metrics.json").is_file()]


__all__ = ["CompareConfig", "aggregate", "existing_runs", "goals", "plot_curves", "read_run", "results_markdown",
           "paired_differences", "per_sample_outcomes", "run_compare", "write_results"]
