"""The results document of ``mapo experiment compare``: a markdown table over seeds and a PNG of the curves.

Everything it writes is read from the run directories (:mod:`mapo.pipelines.compare_stats`), so the
document can be regenerated from existing runs (``--report-only``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapo.pipelines.compare_stats import (
    CURVES,
    RESULT_METRICS,
    SETS_FILE,
    START_DIR,
    TEST_EVAL,
    aggregate,
    check_same_sets,
    goals,
    on_test_set,
    oracle_arm,
    oracle_fractions,
    paired_differences,
    read_run,
)

LOG_SCALE = ("grad_var_bootstrap",)


def _pm(stat: dict[str, Any], runs: int) -> str:
    """``mean ± std`` in one format chosen by the mean's size; ``(n=k)`` when only k of ``runs`` runs define it."""
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "n/a"
    spec = ".3e" if mean != 0 and abs(mean) < 1e-3 else ".3f"
    text = f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"
    return text + (f" (n={stat['n']})" if stat["n"] < runs else "")


def _set_label(sets: dict[str, Any] | None, which: str, n: Any) -> str:
    """``test set (400 samples, seed 2000003)``; the seed only when ``OUT/sets.json`` records it."""
    info = (sets or {}).get(which) or {}
    seed = f", seed {info['seed']}" if info.get("seed") is not None else ""
    return f"{which} set ({n} samples{seed})"


def _metric_table(runs: Sequence[dict[str, Any]], start: dict[str, Any] | None, sources: tuple[str, ...]) -> list[str]:
    """``| metric | warm start | arm ... |`` rows of :data:`RESULT_METRICS` whose source is in ``sources``."""
    agg = aggregate(runs)
    arms = list(agg)
    counts = {a: sum(r["arm"] == a for r in runs) for a in arms}
    lines = ["| metric | " + ("warm start | " if start else "") + " | ".join(arms) + " |",
             "|---|" + ("---|" if start else "") + "---|" * len(arms)]
    for key, label, source, higher in RESULT_METRICS:
        if source not in sources:
            continue
        arrow = {True: " ↑", False: " ↓", None: ""}[higher]
        first = ""
        if start:
            value = start.get(key) if source == "eval" else None
            first = ("–" if value is None else f"{value:.3f}") + " | "
        lines.append(f"| {label}{arrow} | " + first + " | ".join(_pm(agg[a][key], counts[a]) for a in arms) + " |")
    return lines


def _differences(runs: Sequence[dict[str, Any]], baseline: str, where: str) -> list[str]:
    diffs = paired_differences(runs, baseline)
    if not diffs:
        return []
    lines = ["", f"## Differences from `{baseline}`, paired by seed: {where}", "",
             "Δ is the mean over seeds of (arm − baseline) on the same samples. *seed 95% CI*: "
             "t-interval of the per-seed differences (run-to-run noise); *sample 95% CI*: normal interval over "
             "every (seed, sample) pair (evaluation noise only); *p*: paired t-test over seeds.", "",
             "| arm | metric | Δ | seed 95% CI | sample 95% CI | p | seeds |", "|---|---|---|---|---|---|---|"]

    def num(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    for d in diffs:
        lines.append(f"| {d['arm']} | {d['metric']} | {d['diff']:+.3f} | {num(d['seed_ci'], '± {:.3f}')} | "
                     f"{num(d['sample_ci'], '± {:.3f}')} | {num(d['p'], '{:.3f}')} | {d['seeds']} |")
    return lines


def _oracle_section(runs: Sequence[dict[str, Any]], baseline: str, where: str) -> list[str]:
    """How much of the oracle arm's gain over the baseline each other arm recovers (when an arm is the oracle)."""
    oracle = oracle_arm(runs)
    rows = oracle_fractions(runs, baseline, oracle) if oracle is not None and oracle != baseline else []
    if not rows:
        return []
    lines = ["", f"## Per-turn credit: the share of the oracle's gain over `{baseline}` each arm recovers ({where})", "",
             f"`{oracle}` is trained with the crop's IoU with the target box as its per-turn score: it needs box "
             "labels, which MAPO does not, so it bounds what per-turn credit can do here. *fraction* = mean over "
             f"seeds of (arm − {baseline}) / mean over seeds of ({oracle} − {baseline}); its 95% interval resamples "
             f"seeds. It is undefined when the oracle's own gain is not above zero (its seed 95% interval reaches 0).",
             "", f"| arm | metric | arm − {baseline} | {oracle} − {baseline} (seed 95% CI) | fraction (95% CI) | seeds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r["oracle_ci"] is None else f"± {r['oracle_ci']:.3f}"
        if r["defined"]:
            lo_hi = "" if r["ci"] is None else f" ({r['ci'][0]:.2f} to {r['ci'][1]:.2f})"
            frac = f"{r['fraction']:.2f}{lo_hi}"
        else:
            frac = "undefined: the oracle gains nothing here"
        lines.append(f"| {r['arm']} | {r['metric']} | {r['gain']:+.3f} | {r['oracle_gain']:+.3f} {ci} | {frac} | {r['seeds']} |")
    return lines


def results_markdown(
    runs: Sequence[dict[str, Any]], command: str, meta: dict[str, Any], plot: str | None,
    start: dict[str, Any] | None = None, *, start_test: dict[str, Any] | None = None, sets: dict[str, Any] | None = None,
) -> str:
    """The text of ``docs/RESULTS.md`` from the runs' own files (see :func:`read_run`).

    With test evaluations (every run's ``eval_test``) the headline table, the paired
    differences and the goals are on the test set, and the validation set's evaluation
    figures follow in their own labelled section; without, everything is on the
    validation set and the document says so. ``start`` / ``start_test``: the warm start's
    eval ``tools`` metrics on each set (``OUT/start/eval*/metrics.json``), a first column
    when given. ``sets``: ``OUT/sets.json`` (sizes and seeds for the labels). An arm trained with
    ``semantic_target: oracle_iou`` is the oracle: the document then says how much of its gain over
    the baseline each other arm recovers (:func:`oracle_fractions`).
    """
    has_test = runs[0]["test"] is not None
    head = on_test_set(runs) if has_test else list(runs)
    head_start = start_test if has_test else start
    validation = _set_label(sets, "validation", runs[0]["n_eval"])
    where = _set_label(sets, "test", head[0]["n_eval"]) if has_test else validation
    agg = aggregate(head)
    arms = list(agg)
    seeds = sorted({r["seed"] for r in runs})
    steps = sorted({r["steps"] for r in runs})
    cfg = runs[0]["config"]
    sets_text = (f"Evaluation sets: the **{where}**, measured once on every final policy, nothing chosen on it (the "
                 f"headline figures); the {validation}, which the runs' periodic evaluation reads and settings are "
                 "chosen on (shown separately below)." if has_test else
                 f"Evaluation set: the **{validation}** only (no test set was configured, `pipeline.test.n: 0`); "
                 "settings are chosen on it, so its figures may flatter the arms that were tuned.")
    lines = [
        "# Results: MAPO vs GRPO on the embedded synthetic task", "",
        "<!-- GENERATED by the command below; do not edit by hand. -->", "",
        f"Generated by `{command}` on {meta['date']} ({meta['machine']}; torch {meta['torch']}, "
        f"{meta['threads']} CPU thread(s)); total wall time of the runs read: {meta['wall_min']:.1f} min.", "",
        f"Setup: every run starts from the same warm start (`{_shown_path(cfg['policy'])}`), for {', '.join(map(str, steps))} steps "
        f"of {cfg['prompts_per_step']} prompts × G={cfg['rollout']['group_size']} trajectories, lr {cfg['optim']['lr']}, "
        f"seeds {', '.join(map(str, seeds))}. Synthetic samples of level `{cfg['data']['synth_level']}`, greedy, scored "
        f"by `mapo eval` with the verifier `{_shown_path(meta['verifier'])}`. {sets_text} "
        "Mean ± sample std over seeds; `(n=k)`: only k runs define the metric (e.g. crop IoU of a policy that "
        "made no crop). `n/a`: no run defines it." + (" The runs were made by the same command without "
        "`--report-only`." if "--report-only" in command else ""), "",
    ]
    arm_lines = {r["arm"]: r.get("overrides") for r in runs}
    if any(arm_lines.values()):
        lines += ["Arms (overrides of the RL recipe; the first is the baseline): " + "; ".join(
            f"`{a}`: " + (" ".join(f"`{o}`" for o in o_list) if o_list else "none") for a, o_list in arm_lines.items()) + ".", ""]
    lines += [f"## {where[0].upper() + where[1:]}", ""]
    lines += _metric_table(head, head_start, ("eval", "train"))
    lines += _differences(head, arms[0], where)
    lines += _oracle_section(head, arms[0], where)
    checked = goals(agg, arms[0], "mapo" if "mapo" in agg else arms[1])
    if checked:
        lines += ["", f"## Goals, checked on the means, {where}", "",
                  "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {v} | {'n/a' if ok is None else ('yes' if ok else 'no')} |" for g, v, ok in checked]
    if has_test:
        lines += ["", f"## {validation[0].upper() + validation[1:]}: where settings are chosen", "",
                  "The same final policies on the validation set (training-side rows are in the table above)."]
        lines += [""] + _metric_table(runs, start, ("eval",))
        lines += _differences(runs, arms[0], validation)
    lines += ["", f"## Per run ({where})", "",
              "| arm | seed | " + " | ".join(label for _, label, _, _ in RESULT_METRICS) + " | run |",
              "|---|---|" + "---|" * (len(RESULT_METRICS) + 1)]
    for r in sorted(head, key=lambda r: (r["arm"], r["seed"])):
        cells = ["n/a" if r["values"][k] is None else f"{r['values'][k]:.4g}" for k, *_ in RESULT_METRICS]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + f" | `{r['run_dir']}` |")
    if plot:
        lines += ["", "## Curves", "", f"![training curves]({plot})", "",
                  "Mean over seeds (line) and min–max over seeds (band); `eval/accuracy` is the periodic greedy "
                  "evaluation inside `mapo train`, on the validation set."]
    lines += ["", "## How to read this", "",
              "- Gradient variance is the bootstrap estimate of `docs/metrics.md` (projection on one fixed random "
              "direction, the same for every arm). It scales with the advantages' magnitude, and MAPO's "
              "advantage adds β·C to GRPO's, so a lower number is not free.",
              "- Step time excludes the bootstrap diagnostic; GRPO runs without a verifier unless the command says "
              "otherwise. The verifier's own cost is the row `verifier time per step`; the rest of a step-time "
              "difference is behaviour (a policy that stops zooming generates fewer tokens: see `generated tokens / "
              "trajectory`).",
              "- The semantic score is `mapo eval`'s (the description after each view against its crop) for "
              "every arm, one yardstick, whatever the arm's training target.",
              "- With few seeds and a small evaluation set, differences smaller than the std are not evidence either "
              "way; the seed 95% interval of a difference is the power statement: a difference smaller than it could "
              "not have been detected."]
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
    run_dirs: Sequence[str | Path], doc: str | Path, img_dir: str | Path, command: str, *, verifier: str = ""
) -> Path:
    """Read ``run_dirs``, write the curves PNG into ``img_dir`` and the results document ``doc``; return ``doc``."""
    import torch

    if not run_dirs:
        raise ValueError("no run directories to summarise")
    runs = [read_run(d) for d in run_dirs]
    check_same_sets(runs)
    out = Path(run_dirs[0]).parent.parent
    start, start_test = (_tools(out / START_DIR / name / "metrics.json") for name in ("eval", TEST_EVAL))
    sets = json.loads((out / SETS_FILE).read_text(encoding="utf-8")) if (out / SETS_FILE).is_file() else None
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
        "verifier": verifier or _scoring_verifier(runs),
    }
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(results_markdown(runs, command, meta, rel, start, start_test=start_test, sets=sets), encoding="utf-8")
    return doc


def _scoring_verifier(runs: Sequence[dict[str, Any]]) -> str:
    """The verifier the evaluations were scored with (their metrics.json ``run.verifier``), not an arm's training one.

    Falls back to the first arm's training verifier for evaluations that did not record one.
    """
    for r in runs:
        path = Path(r["run_dir"]) / "eval" / "metrics.json"
        recorded = (json.loads(path.read_text(encoding="utf-8")).get("run") or {}).get("verifier") if path.is_file() else None
        if recorded:
            return recorded
    return next((r["config"]["verifier"] for r in runs if r["config"].get("verifier")), "n/a")


def _tools(path: Path) -> dict[str, Any] | None:
    """A ``mapo eval`` metrics.json's ``tools`` statistics, None when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8"))["tools"] if path.is_file() else None


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
