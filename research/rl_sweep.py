"""Which RL setting makes the embedded default learn? Runs named variants and writes their table.

    python research/rl_sweep.py run  g8_lr3e4 [NAME ...] --root runs/rl_sweep   # train + evaluate
    python research/rl_sweep.py table --root runs/rl_sweep > docs/rl_sweep.md      # the table in docs/training.md
    python research/rl_sweep.py curve g8_lr3e4 --root runs/rl_sweep                # its kept checkpoints, evaluated
    python research/rl_sweep.py test g8_lr1e4 g8_lr3e4 --root runs/rl_sweep runs/rl_sweep_s1  # finals on the test set

Every variant is ``mapo train --config configs/train_tiny.yaml`` plus its overrides
(:data:`VARIANTS`), from the same warm start. Its final policy and the warm start
itself are evaluated greedily by ``mapo eval``'s code (:func:`mapo.eval.evaluate`)
on the same held-out V* folder, written like ``mapo data synth --format vstar``
(``--n`` samples of the variant's level, seed 1000003), so the before/after
figures are measured on the public path. The table gives, per variant:
held-out accuracy and first-zoom hit before -> after with the paired difference
and its 95% interval (normal approximation over the per-sample differences),
and the training diagnostics averaged over the first and the last 10 steps
(share of groups with zero reward variance, share of loss tokens with a nonzero
advantage, entropy, clip fraction, KL to the start when measured).

Research code: not part of the installed package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

BASE = "configs/train_tiny.yaml"
HELDOUT_SEED = 1_000_003  # the validation set: settings are chosen here
TEST_SEED, TEST_N = 2_000_003, 400  # the test set: measured once per chosen policy (`test`)
# name -> overrides of configs/train_tiny.yaml (GRPO unless the name says otherwise).
_GRPO = ["advantage.estimator=grpo", "verifier=null"]
VARIANTS: dict[str, list[str]] = {
    # the demo's budget before: 4 prompts x G=4, lr 1e-4, temperature 0.7
    "demo_before": [*_GRPO, "steps=30", "rollout.temperature=0.7"],
    "g8_lr1e4": [*_GRPO, "steps=60", "rollout.group_size=8"],
    "g8_lr3e4": [*_GRPO, "steps=60", "rollout.group_size=8", "optim.lr=3e-4"],
    "g8_lr3e4_kl": [*_GRPO, "steps=60", "rollout.group_size=8", "optim.lr=3e-4", "loss.kl_coef=0.05"],
    "g8_lr1e3_kl": [*_GRPO, "steps=60", "rollout.group_size=8", "optim.lr=1e-3", "loss.kl_coef=0.05"],
    "g16_lr3e4": [*_GRPO, "steps=40", "rollout.group_size=16", "prompts_per_step=2", "optim.lr=3e-4"],
    "t07_g8_lr1e4": [*_GRPO, "steps=60", "rollout.group_size=8", "rollout.temperature=0.7"],
    "t07_g8_lr2e4_kl": [*_GRPO, "steps=60", "rollout.group_size=8", "rollout.temperature=0.7", "optim.lr=2e-4",
                        "loss.kl_coef=0.05"],
    "batch_t07_p8_lr1e4": [*_GRPO, "steps=60", "rollout.group_size=4", "prompts_per_step=8",
                           "rollout.temperature=0.7", "advantage.baseline=batch"],
    "batch_t07_p8_lr3e4": [*_GRPO, "steps=60", "rollout.group_size=4", "prompts_per_step=8",
                           "rollout.temperature=0.7", "advantage.baseline=batch", "optim.lr=3e-4"],
    "g8_t1_lr3e5_80": [*_GRPO, "steps=80", "rollout.group_size=8", "optim.lr=3e-5"],
    "g8_t07_lr1e4_60": [*_GRPO, "steps=60", "rollout.group_size=8", "rollout.temperature=0.7"],
    "batch_g4p8_t1_lr3e5_80": [*_GRPO, "steps=80", "rollout.group_size=4", "prompts_per_step=8", "optim.lr=3e-5",
                              "advantage.baseline=batch"],
    "g8_t1_lr3e5_60": [*_GRPO, "steps=60", "rollout.group_size=8", "optim.lr=3e-5"],
    "g8_t1_lr1e4_60": [*_GRPO, "steps=60", "rollout.group_size=8"],
    "g8_t1_lr3e5_150": [*_GRPO, "steps=150", "rollout.group_size=8", "optim.lr=3e-5"],
    "g8p8_lr1e4_kl": [*_GRPO, "steps=80", "rollout.group_size=8", "prompts_per_step=8", "loss.kl_coef=0.05"],
    "g8p8_lr5e5": [*_GRPO, "steps=80", "rollout.group_size=8", "prompts_per_step=8", "optim.lr=5e-5"],
    "g8p8_t07": [*_GRPO, "steps=80", "rollout.group_size=8", "prompts_per_step=8", "rollout.temperature=0.7"],
    # Among distractors from the finished warm start (configs/compare_distractors.yaml's budget).
    **{
        f"pd_{name}": ["steps=60", "rollout.group_size=8", "rollout.max_turns=3", *extra]
        for name, extra in {
            "grpo_lr3e5": [*_GRPO, "optim.lr=3e-5"],
            "grpo_lr1e4": [*_GRPO, "optim.lr=1e-4"],
            # the same episodes in fewer, larger steps: 16 prompts x G=8 per update (less noise per step)
            "grpo_p16_lr3e5_30": [*_GRPO, "optim.lr=3e-5", "prompts_per_step=16", "steps=30"],
            "grpo_p16_t07_lr3e5_30": [*_GRPO, "optim.lr=3e-5", "prompts_per_step=16", "steps=30", "rollout.temperature=0.7"],
            # three times the episodes of the 30-step runs: does more RL data teach where to look, and does
            # per-turn credit (the oracle's crop IoU) help then?
            "grpo_p16_t07_lr3e5_90": [*_GRPO, "optim.lr=3e-5", "prompts_per_step=16", "steps=90", "rollout.temperature=0.7"],
            "oracle_p16_t07_lr3e5_90": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null",
                                        "optim.lr=3e-5", "prompts_per_step=16", "steps=90", "rollout.temperature=0.7"],
            # a larger batch (32 prompts x G=8 per update) so that a larger step follows the signal, not the noise
            "grpo_p32_lr1e4_40": [*_GRPO, "optim.lr=1e-4", "prompts_per_step=32", "steps=40"],
            "oracle_p32_lr1e4_40": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null",
                                    "optim.lr=1e-4", "prompts_per_step=32", "steps=40"],
            "grpo_p32_lr3e4_40": [*_GRPO, "optim.lr=3e-4", "prompts_per_step=32", "steps=40"],
            "oracle_p32_lr3e4_40": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null",
                                    "optim.lr=3e-4", "prompts_per_step=32", "steps=40"],
            "grpo_p32_lr1e4_40_fv": [*_GRPO, "optim.lr=1e-4", "prompts_per_step=32", "steps=40",
                                     "finetune.freeze_vision=true"],
            "grpo_p32_lr3e4_40_fv": [*_GRPO, "optim.lr=3e-4", "prompts_per_step=32", "steps=40",
                                     "finetune.freeze_vision=true"],
            "oracle_p32_lr1e4_40_fv": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null",
                                       "optim.lr=1e-4", "prompts_per_step=32", "steps=40", "finetune.freeze_vision=true"],
            "mapo_label_p32_lr1e4_40_fv": ["advantage.estimator=mapo", "semantic_target=label",
                                           "verifier=runs/verifier_label", "optim.lr=1e-4", "prompts_per_step=32",
                                           "steps=40", "finetune.freeze_vision=true"],
            # four times the episodes of the best 40-step budget, a checkpoint every 40 steps: does the greedy
            # first-zoom hit follow the sampled one with more RL (`curve` evaluates the checkpoints)?
            "grpo_p32_lr1e4_160_fv": [*_GRPO, "optim.lr=1e-4", "prompts_per_step=32", "steps=160",
                                      "finetune.freeze_vision=true", "save_every=40", "keep_last=4"],
            "mapo_label_p32_lr1e4_160_fv": ["advantage.estimator=mapo", "semantic_target=label",
                                            "verifier=runs/verifier_label", "optim.lr=1e-4", "prompts_per_step=32",
                                            "steps=160", "finetune.freeze_vision=true", "save_every=40", "keep_last=4"],
            "oracle_p16_lr3e5_30": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null",
                                    "optim.lr=3e-5", "prompts_per_step=16", "steps=30"],
            "oracle_lr3e5": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null", "optim.lr=3e-5"],
            "oracle_lr1e4": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null", "optim.lr=1e-4"],
            "oracle_b1_lr1e4": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null", "optim.lr=1e-4",
                                "advantage.beta=1.0"],
        }.items()
    },
    # The search warm start (configs/warmstart_search_misses.yaml): up to 3 zooms and an answer in 4 turns.
    **{
        f"search_{name}": ["steps=60", "rollout.group_size=8", "rollout.max_turns=4", "rollout.max_images=4", *extra]
        for name, extra in {
            "grpo_t1_lr3e5": [*_GRPO, "optim.lr=3e-5"],
            "grpo_t1_lr1e4": [*_GRPO, "optim.lr=1e-4"],
            "grpo_t07_lr1e4": [*_GRPO, "optim.lr=1e-4", "rollout.temperature=0.7"],
            "grpo_t07_lr3e5": [*_GRPO, "optim.lr=3e-5", "rollout.temperature=0.7"],
            "grpo_g4p8_t1_lr1e4": [*_GRPO, "optim.lr=1e-4", "rollout.group_size=4", "prompts_per_step=8"],
            "mapo_label_t1_lr1e4": ["advantage.estimator=mapo", "semantic_target=label", "optim.lr=1e-4"],
            "mapo_desc_t1_lr1e4": ["advantage.estimator=mapo", "semantic_target=description", "optim.lr=1e-4"],
            "oracle_t1_lr1e4": ["advantage.estimator=mapo", "semantic_target=oracle_iou", "verifier=null", "optim.lr=1e-4"],
        }.items()
    },
}
DIAGNOSTICS = ("reward_mean", "zero_var_group_frac", "adv_nonzero_frac", "entropy", "clip_frac", "kl")


def _config(name: str, level: str, synth: dict, policy: str, extra: list[str]):
    from mapo.core.config import load_config
    from mapo.train.rl import RLConfig

    overrides = [f"policy={policy}", f"data.synth_level={level}", f"data.synth={json.dumps(synth)}", "data.n_eval=0",
                 "tensorboard=false", *VARIANTS[name], *extra]
    return load_config(RLConfig, BASE, overrides), overrides


def heldout_dir(root: Path, level: str, synth_overrides: dict, n: int, seed: int = HELDOUT_SEED,
                name: str = "heldout") -> Path:
    """The held-out V* folder (written once): what `mapo data synth --format vstar` writes."""
    from mapo.data import synth
    from mapo.data.benchmarks import write_samples

    out = root / f"{name}_{level}_{n}"
    if not (out / "vstar").is_dir():
        write_samples(synth.generate(n, seed, synth.level_config(level, **synth_overrides)), out, ["vstar"])
    return out / "vstar"


def evaluate_policy(policy_dir: str, data: Path, out: Path) -> dict:
    from mapo.eval import EvalConfig, evaluate
    from mapo.policy import load_policy

    if not (out / "metrics.json").is_file():
        evaluate(str(data), out, policy=load_policy(policy_dir, dtype="float32"), config=EvalConfig(), progress=None)
    return json.loads((out / "metrics.json").read_text())


def run(names: list[str], root: Path, level: str, synth: dict, n: int, policy: str, extra: list[str]) -> None:
    import torch

    from mapo.train.rl import train

    torch.set_num_threads(1)
    data = heldout_dir(root, level, synth, n)
    evaluate_policy(policy, data, root / f"start_{level}_{n}")
    for name in names:
        cfg, overrides = _config(name, level, synth, policy, extra)
        run_dir = root / name
        (root / "overrides").mkdir(parents=True, exist_ok=True)
        (root / "overrides" / f"{name}.json").write_text(json.dumps({"overrides": overrides, "level": level, "n": n,
                                                                      "policy": policy}))
        train(cfg, run_dir, resume=(run_dir / "run.json").is_file(), progress=False)
        evaluate_policy(str(run_dir / "final"), data, run_dir / f"eval_{level}_{n}")


# ----------------------------------------------------------------------------- the table


def _per_sample(eval_dir: Path) -> dict[str, tuple[bool, bool]]:
    """id -> (correct, first valid crop hits a target at IoU >= 0.5), as the compare reads them."""
    from mapo.pipelines.compare import per_sample_outcomes

    return per_sample_outcomes(eval_dir / "predictions.jsonl")


def paired(before: dict, after: dict, index: int) -> tuple[float, float, float, float]:
    """``(before rate, after rate, difference, 95% half-width)`` over the ids both sets hold."""
    ids = sorted(set(before) & set(after))
    if not ids:
        raise ValueError("the two evaluations share no sample: they were not run on the same held-out set")
    d = [float(after[i][index]) - float(before[i][index]) for i in ids]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    b = sum(before[i][index] for i in ids) / n
    return b, b + mean, mean, 1.96 * sd / math.sqrt(n)


def _window_means(run_dir: Path, steps: int) -> dict[str, tuple[float | None, float | None]]:
    from mapo.train.metrics_log import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time_step" in r]
    out = {}
    for key in DIAGNOSTICS:
        def mean(part):
            vals = [r[key] for r in part if key in r]
            return sum(vals) / len(vals) if vals else None
        out[key] = (mean(rows[:steps]), mean(rows[-steps:]))
    wall = sum(r["time_step"] for r in rows)
    out["wall_min"] = (wall / 60, None)
    return out


def table(roots: list[Path]) -> str:
    lines = [
        "<!-- GENERATED by `python research/rl_sweep.py table --root " + " ".join(map(str, roots))
        + "`; do not edit by hand. -->",
        "",
        "| variant | start | task | overrides | held-out accuracy | Δ (95% CI) | first-zoom hit | Δ (95% CI) | train min | "
        "zero-var groups | nonzero-adv tokens | entropy | clip frac | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for root, spec_file in ((r, f) for r in roots for f in sorted((r / "overrides").glob("*.json"))):
        name = spec_file.stem
        spec = json.loads(spec_file.read_text())
        level, n = spec["level"], spec["n"]
        eval_dir = root / name / f"eval_{level}_{n}"
        if not (eval_dir / "predictions.jsonl").is_file():
            continue
        before = _per_sample(root / f"start_{level}_{n}")
        after = _per_sample(eval_dir)
        acc, hit = paired(before, after, 0), paired(before, after, 1)
        diag = _window_means(root / name, 10)

        def fmt(pair):
            a, b = pair
            f = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
            return f"{f(a)} → {f(b)}"

        shown = [o for o in VARIANTS.get(name, spec["overrides"]) if not o.startswith(("verifier=", "advantage.estimator=grpo"))]
        lines.append(
            f"| `{name}` | `{spec['policy']}` | {_task(spec)} | {' '.join(shown)} | {acc[0]:.3f} → {acc[1]:.3f} | {acc[2]:+.3f} ± {acc[3]:.3f} | "
            f"{hit[0]:.3f} → {hit[1]:.3f} | {hit[2]:+.3f} ± {hit[3]:.3f} | {diag['wall_min'][0]:.1f} | "
            + " | ".join(fmt(diag[k]) for k in ("zero_var_group_frac", "adv_nonzero_frac", "entropy", "clip_frac", "kl"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def curve(root: Path, name: str) -> str:
    """The learning curve of one variant: each kept checkpoint evaluated on the variant's held-out set.

    Per checkpoint: greedy accuracy and first-zoom hit before -> after with the paired difference and its 95%
    interval, beside the sampled (training) first-zoom hit and accuracy averaged over the 10 steps before it.
    Evaluations are cached under ``root/name/eval_step_NNNNNN``.
    """
    from mapo.train.metrics_log import read_metrics

    spec = json.loads((root / "overrides" / f"{name}.json").read_text())
    level, n = spec["level"], spec["n"]
    data = heldout_dir(root, level, {}, n)
    before = _per_sample(root / f"start_{level}_{n}")
    rows = [r for r in read_metrics(root / name / "metrics.jsonl") if "time_step" in r]
    lines = [
        f"<!-- GENERATED by `python research/rl_sweep.py curve {name} --root {root}`; do not edit by hand. -->",
        "",
        "| step | held-out accuracy | Δ (95% CI) | first-zoom hit | Δ (95% CI) | sampled hit, 10 steps before | sampled accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for ckpt in sorted((root / name / "checkpoints").glob("step_*")):
        step = int(ckpt.name.split("_")[1])
        eval_dir = root / name / f"eval_{ckpt.name}"
        evaluate_policy(str(ckpt / "model"), data, eval_dir)
        after = _per_sample(eval_dir)
        acc, hit = paired(before, after, 0), paired(before, after, 1)
        window = [r for r in rows if step - 10 < r["step"] <= step]
        sampled_hit = sum(r["hit_rate"] for r in window) / max(len(window), 1)
        sampled_acc = sum(r["accuracy"] for r in window) / max(len(window), 1)
        lines.append(f"| {step} | {acc[0]:.3f} → {acc[1]:.3f} | {acc[2]:+.3f} ± {acc[3]:.3f} | {hit[0]:.3f} → {hit[1]:.3f} | "
                     f"{hit[2]:+.3f} ± {hit[3]:.3f} | {sampled_hit:.3f} | {sampled_acc:.3f} |")
    return "\n".join(lines) + "\n"


def test_table(names: list[str], roots: list[Path], n: int = TEST_N) -> str:
    """Each variant's final policy, one row per root (a seed), on the **test set**, against its start.

    The test set is ``n`` samples of the variant's level at seed :data:`TEST_SEED`, written once under the first
    root like ``mapo data synth --format vstar``; nothing is chosen on it. Each row: accuracy and first-zoom hit
    with the paired difference from the start and its 95% interval over samples. With several variants, a last
    table pairs each with the first, seed by seed.
    """
    import yaml

    spec = json.loads((roots[0] / "overrides" / f"{names[0]}.json").read_text())
    level, policy = spec["level"], spec["policy"]
    data = heldout_dir(roots[0], level, {}, n, seed=TEST_SEED, name="test")
    start_dir = roots[0] / f"start_test_{level}_{n}"
    evaluate_policy(policy, data, start_dir)
    start = _per_sample(start_dir)
    lines = [
        f"<!-- GENERATED by `python research/rl_sweep.py test {' '.join(names)} --root {' '.join(map(str, roots))}`; "
        "do not edit by hand. -->",
        "",
        f"Test set: {n} `{level}` samples, seed {TEST_SEED}; start `{policy}`.",
        "",
        "| variant | seed | accuracy | Δ vs start (95% CI) | first-zoom hit | Δ vs start (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    finals: dict[str, dict[int, dict]] = {name: {} for name in names}
    for name in names:
        for root in roots:
            run_dir = root / name
            if not (run_dir / "final").is_dir():
                continue
            seed = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
            eval_dir = run_dir / "eval_test"
            evaluate_policy(str(run_dir / "final"), data, eval_dir)
            finals[name][seed] = after = _per_sample(eval_dir)
            acc, hit = paired(start, after, 0), paired(start, after, 1)
            lines.append(f"| `{name}` | {seed} | {acc[1]:.3f} | {acc[2]:+.3f} ± {acc[3]:.3f} | {hit[1]:.3f} | "
                         f"{hit[2]:+.3f} ± {hit[3]:.3f} |")
    base = names[0]
    pairs = [(name, seed) for name in names[1:] for seed in sorted(finals[name]) if seed in finals[base]]
    if pairs:
        lines += ["", f"| variant − `{base}` | seed | Δ accuracy (95% CI) | Δ first-zoom hit (95% CI) |", "|---|---|---|---|"]
        for name, seed in pairs:
            acc, hit = (paired(finals[base][seed], finals[name][seed], i) for i in (0, 1))
            lines.append(f"| `{name}` | {seed} | {acc[2]:+.3f} ± {acc[3]:.3f} | {hit[2]:+.3f} ± {hit[3]:.3f} |")
    return "\n".join(lines) + "\n"


def _task(spec: dict) -> str:
    """The RL level and its synthetic overrides, as recorded with the variant."""
    synth = next((o.split("=", 1)[1] for o in spec["overrides"] if o.startswith("data.synth=")), "{}")
    return spec["level"] + ("" if synth == "{}" else f" {synth}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python research/rl_sweep.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="train and evaluate variants")
    p.add_argument("names", nargs="+", choices=sorted(VARIANTS))
    p.add_argument("--root", type=Path, default=Path("runs/rl_sweep"))
    p.add_argument("--level", default="pattern_distractors")
    p.add_argument("--synth", default="{}", help='SynthConfig overrides as JSON, e.g. \'{"cell_aligned": false}\'')
    p.add_argument("--n", type=int, default=200, help="held-out samples")
    p.add_argument("--policy", default="default", help="warm start: 'default' (shipped) or a policy directory")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every variant")
    t = sub.add_parser("table", help="the markdown table of finished variants")
    t.add_argument("--root", type=Path, nargs="+", default=[Path("runs/rl_sweep")], help="one or more sweep roots")
    c = sub.add_parser("curve", help="evaluate a variant's kept checkpoints: its learning curve")
    c.add_argument("name")
    c.add_argument("--root", type=Path, default=Path("runs/rl_sweep"))
    e = sub.add_parser("test", help="variants' final policies on the test set, one row per root (seed)")
    e.add_argument("names", nargs="+")
    e.add_argument("--root", type=Path, nargs="+", default=[Path("runs/rl_sweep")], help="one root per seed")
    e.add_argument("--n", type=int, default=TEST_N, help="test samples")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        policy = args.policy
        if policy == "default":
            from mapo.policy.default import DEFAULT_DIR

            policy = str(DEFAULT_DIR)
        run(args.names, args.root, args.level, json.loads(args.synth), args.n, policy, args.set)
    elif args.cmd == "test":
        import torch

        torch.set_num_threads(1)
        sys.stdout.write(test_table(args.names, args.root, args.n))
    elif args.cmd == "curve":
        import torch

        torch.set_num_threads(1)
        sys.stdout.write(curve(args.root, args.name))
    else:
        sys.stdout.write(table(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
