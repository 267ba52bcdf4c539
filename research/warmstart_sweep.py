"""Warm-start sweep and goal evaluation for the embedded default policy.

Research code, not part of the installed package; run from the repository root.
A randomly initialised tiny Qwen2.5-VL must come out of ``mapo sft`` able to
*localise* (first zoom on the target), *read* (describe the crop) and *answer*.
This script

- runs named SFT variants through the project's own recipe
  (:func:`mapo.train.sft.run_sft` on ``configs/warmstart_letters.yaml``, stage 1 of the
  shipped recipe, plus overrides),
  each in ``ROOT/NAME``;
- measures these goals on held-out samples (:func:`evaluate_goals`);
- writes the sweep table of ``docs/warmstart.md`` from the run directories
  (:func:`sweep_table`), and the figure of the policy's zooms (:func:`zoom_figure`).

Commands (``python research/warmstart_sweep.py ...``)::

    run NAME [NAME ...] [--root runs/warmstart]   # train listed variants (VARIANTS, FIRST_VARIANTS)
    goals RUN_DIR [--level easy] [--n 200]         # held-out goal metrics -> RUN_DIR/goals_<level>.json
    table [--root runs/warmstart]                  # the markdown sweep table
    letters RUN_DIR [--n 64] [--step N]            # where its letters come from -> RUN_DIR/letters.json
    words RUN_DIR [--n 64] [--step N]              # the same for the asked word (ink, pattern levels) -> RUN_DIR/words.json
    context RUN_DIR [--n 16]                       # does it use its prompt? -> RUN_DIR/context_effects.json
    figure POLICY_DIR --out docs/img/warmstart_zooms.png

Metric definitions (held-out split: ``synth.generate(n, seed=EVAL_SEED, level)``):

- ``first_zoom_hit`` = mean_i [IoU(first valid crop_i, target box) >= 0.5], 0 without a valid call;
- ``accuracy_tool`` = mean_i [answer letter of greedy rollout_i == answer_i] (up to 4 turns);
- ``accuracy_no_tool`` = mean_i [argmax over options of log p(answer turn | prompt with the
  global view only) == answer_i]: the model's best guess when it cannot zoom. The
  candidate answer turns are the oracle's final turn written for each option, scored
  teacher-forced. Chance is 1 / number of options.
- ``description_object`` = over valid crops followed by a description, the fraction whose
  set of "colour shape" phrases equals that of the ground-truth caption of the crop
  (:func:`mapo.data.synth.caption_for_crop`; "empty background" must be said as such);
- ``description_glyph`` = same, for the set of letters;
- ``description_detail`` = same, for the asked detail after each letter ("the letter K in cyan",
  "the letter K and checks") on ink and pattern levels; null elsewhere.

Departure: the no-tool accuracy is a likelihood ranking, not a rollout with the tool
switched off: the warm-started policy always zooms first, so a rollout that refuses
its tool call would end without an answer and score 0, not its knowledge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo.data.synth_render import PATTERNS

EVAL_SEED = 1_000_003  # = SFTEvalConfig.seed: the held-out split
BASE_CONFIG = "configs/warmstart_letters.yaml"  # stage 1 of the shipped recipe (localise): the base of VARIANTS
FIRST_CONFIG = "research/configs/warmstart_v1.yaml"  # the first recipe: long system prompt, textured background

# name -> overrides of configs/warmstart_letters.yaml: the rows of the sweep tables in docs/warmstart.md.
# "fromS1" rows start from stage 1's policy (train it first:
# `mapo sft --config configs/warmstart_letters.yaml --out runs/warmstart/letters`; the runs in runs/ws2 and
# runs/ws3 read it from runs/warmstart/default, the shipped default then); the docs rows marked fromP4 started from the
# probe's P4 run, the same recipe.
_FROM_STAGE1 = "policy.init_from=runs/warmstart/letters/final"
# The answer word weighted 20x (what made the policy read) and the runs the stages start from.
_READ = ["letter_loss_weight=5", "word_loss_weight=20"]
_FROM_Q1B = "policy.init_from=runs/ws3/Q1b_closeup_fromS1_lr1e3/final"
_FROM_SHIPPED = "policy.init_from=runs/warmstart/default/final"
_LSTX = ["steps=400", "optim.lr=1e-3", "letter_loss_weight=5", "data.synth.glyphs=LSTX", "data.synth.fixed_options=true"]
VARIANTS: dict[str, list[str]] = {
    # runs/ws3: four very different letters, options in a fixed order (the answer letter
    # follows from the glyph), bold, fewer crop tokens; then the letter's colour instead of its shape.
    "R1_lstx_fromS1": [*_LSTX, _FROM_STAGE1],
    "R2_lstx_bold_fromS1": [*_LSTX, "data.synth.glyph_stroke=1", _FROM_STAGE1],
    "R3_lstx_bold_obs112_fromS1": [*_LSTX, "data.synth.glyph_stroke=1", "data.synth.obs_side=112", _FROM_STAGE1],
    "R4_lstx_bold_obs140_fromS1": [*_LSTX, "data.synth.glyph_stroke=1", "data.synth.obs_side=140", _FROM_STAGE1],
    "R5_ink_fixed_fromS1": [
        "steps=400", "optim.lr=1e-3", "letter_loss_weight=5", "data.synth.asks=ink", "data.synth.fixed_options=true",
        "data.synth.glyph_stroke=1", _FROM_STAGE1,
    ],
    "S5_ink_scratch_500": ["steps=500", "letter_loss_weight=5", "data.level=ink"],  # = data.synth ink knobs on easy
    "K1_ink_obs112_scratch": ["steps=500", "letter_loss_weight=5", "data.level=ink", "data.synth.obs_side=112"],
    "K2_ink_obs56_fromS1": [
        "steps=400", "optim.lr=1e-3", "letter_loss_weight=5", "data.level=ink", "data.synth.obs_side=56", _FROM_STAGE1,
    ],
    # The object's surface pattern (asks=pattern); P1/P2 with the ink level's other knobs (224 px crops) and an
    # earlier rendering (no plain patch around the letter, float rounding): a rerun differs slightly.
    "P1_pattern_scratch": [
        "steps=500", "letter_loss_weight=5", "data.level=ink", "data.synth.asks=pattern", "data.synth.fixed_options=true",
    ],
    "P2_pattern_fromS1": [
        "steps=400", "optim.lr=1e-3", "letter_loss_weight=5", "data.level=ink", "data.synth.asks=pattern", _FROM_STAGE1,
    ],
    "P3_pattern_obs112_fromS1": ["steps=400", "optim.lr=1e-3", "letter_loss_weight=5", "data.level=pattern", _FROM_STAGE1],
    "P4_pattern_obs112_scratch": ["steps=500", "letter_loss_weight=5", "data.level=pattern"],
    # A close-up: the whole image is the object (no search, the pattern at full resolution in the view too).
    "CU1_closeup_pattern_scratch": [
        "letter_loss_weight=5", "data.level=pattern", "data.synth.canvas_size=112", "data.synth.grid=1",
        "data.synth.require_zoom=false",
    ],
    # The asked word's tokens weighted 20x in the loss (word_loss_weight): more reading signal per step.
    "CU2_closeup_pattern_word20": [
        "letter_loss_weight=5", "word_loss_weight=20", "data.level=pattern", "data.synth.canvas_size=112",
        "data.synth.grid=1", "data.synth.require_zoom=false",
    ],
    # Reading and localising in one policy.
    "P6_pattern_word20_scratch": [*_READ, "data.level=pattern"],
    "P7_pattern_fromCU2": [*_READ, "data.level=pattern", "policy.init_from=runs/ws3/CU2_closeup_pattern_word20/final"],
    # Stage 2 of the shipped recipe (configs/warmstart_closeup.yaml): stage 1 -> read on the close-up.
    "Q1a_closeup_fromS1_lr3e3": [*_READ, "data.level=closeup", _FROM_STAGE1],
    "Q1b_closeup_fromS1_lr1e3": [*_READ, "data.level=closeup", "optim.lr=1e-3", _FROM_STAGE1],
    # Stage 3 (configs/warmstart.yaml): stage 2 -> the pattern level, to localise again while reading.
    "Q2a_pattern_fromQ1b_lr1e3": [*_READ, "data.level=pattern", "steps=250", "optim.lr=1e-3", _FROM_Q1B],
    "Q2b_pattern_fromQ1b_lr2e3": [*_READ, "data.level=pattern", "steps=250", "optim.lr=2e-3", _FROM_Q1B],
    # After shipping: can SFT teach the binding the shipped policy lacks (pattern_distractors: 15% hits)?
    "B1_binding_fromShipped": [*_READ, "data.level=pattern_distractors", "optim.lr=1e-3", _FROM_SHIPPED],
    "B2_binding_search_fromShipped": [
        *_READ, "data.level=pattern_distractors", "optim.lr=1e-3", "data.wrong_first_zoom=0.3", _FROM_SHIPPED,
    ],
    "P5_pattern_word20_fromS1": [
        "steps=250", "optim.lr=1e-3", "letter_loss_weight=5", "word_loss_weight=20", "data.level=pattern", _FROM_STAGE1,
    ],
    "W1_tiny_2000": ["steps=2000"],  # the recipe at a longer schedule: the rate stays high for long
    "X1_lr1e3_1200": ["steps=1200", "optim.lr=1e-3"],
    "W2_vis128x4_1500": [  # a 4-block, 128-wide vision tower from scratch (V1_vis128x4_s1: the same at 300 steps)
        "steps=1500", "policy.overrides.vision_hidden=128", "policy.overrides.vision_depth=4",
        "policy.overrides.vision_heads=4", "policy.overrides.vision_intermediate=256",
    ],
    "V1_vis128x4_s1": [
        "policy.overrides.vision_hidden=128", "policy.overrides.vision_depth=4", "policy.overrides.vision_heads=4",
        "policy.overrides.vision_intermediate=256",
    ],
    "X2_fromP4_lr1e3_900": ["steps=900", "optim.lr=1e-3", _FROM_STAGE1],  # more of the same data: the glyph?
    "G1_fromP4_letter10": ["steps=600", "optim.lr=1e-3", "letter_loss_weight=10", _FROM_STAGE1],
    "C1_crisp896_fromP4": [  # the glyph drawn at 22 px on an 896 px canvas: crisp in the crop, still 2.75 view px
        "steps=600", "optim.lr=1e-3", "letter_loss_weight=10", "data.synth.canvas_size=896", "data.synth.glyph_px=22",
        _FROM_STAGE1,
    ],
    "D1_distractors_fromS1": ["steps=600", "optim.lr=1e-3", "data.level=distractors", _FROM_STAGE1],  # bind words
    # The glyph also stated in the prompt (data.glyph_hint): can it copy a letter at all?
    "H1_hint50_fromS1": ["steps=600", "optim.lr=1e-3", "data.glyph_hint=0.5", _FROM_STAGE1],
    "H3_hint100_letter20_fromS1": ["data.glyph_hint=1.0", "letter_loss_weight=20", _FROM_STAGE1],
    "H4_hint100_letter20_1000": ["steps=1000", "data.glyph_hint=1.0", "letter_loss_weight=20", _FROM_STAGE1],
    # H5 started from stage 1 with the glyph embeddings set apart by hand (mean + noise at the
    # colour words' spread; the snippet is in docs/warmstart.md), so it has no variant here.
    "S2_hint_scratch": ["data.glyph_hint=1.0"],  # the hint from the first step
    "S3_hint_scratch_untied": ["data.glyph_hint=1.0", "policy.overrides.tie_embeddings=false"],
    "B1_bigglyph40_fromP4": [  # a 40 px glyph, visible even in the global view (no need to zoom)
        "steps=400", "optim.lr=1e-3", "letter_loss_weight=10", "data.synth.glyph_px=40", "data.synth.require_zoom=false",
        _FROM_STAGE1,
    ],
}
# name -> overrides of research/configs/warmstart_v1.yaml (the first shipped recipe).
# a_base, b_clean_lr3, c_bs8_cw5 and L1_cw5_600 ran before the 448 px levels' objects grew from
# 70% to 75% of a cell (docs/warmstart.md, "Geometry fix"); rerunning them now uses 75%.
FIRST_VARIANTS: dict[str, list[str]] = {
    "a_base": ["steps=120", "coord_loss_weight=1.0", "data.jitter=0.1", "data.wrong_first_zoom=0.1", "optim.lr=2e-3"],
    "b_clean_lr3": ["steps=120", "coord_loss_weight=1.0"],
    "c_bs8_cw5": ["batch_size=8", "steps=300"],
    "L1_cw5_600": ["steps=600"],
    "L2_cw5_900": [],  # = research/configs/warmstart_v1.yaml: the first shipped default
    "S1_short_prompt": ["steps=600", "protocol.system_template=You can zoom in on the image with $tool_name."],
    # Sanity: can the pipeline carry position at all? Memorise 64 images (training coord accuracy).
    "M_memorise64": ["steps=200", "data.n_train=64", "eval.n_rollout=0", "save_every=0"],
}


def variant(name: str) -> tuple[str, list[str]]:
    """(base config, overrides) of sweep variant ``name``."""
    if name in VARIANTS:
        return BASE_CONFIG, VARIANTS[name]
    if name in FIRST_VARIANTS:
        return FIRST_CONFIG, FIRST_VARIANTS[name]
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join([*VARIANTS, *FIRST_VARIANTS])}")


COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_WORDS = ("circle", "square", "triangle", "diamond")
_OBJECT = re.compile(r"\b(" + "|".join(COLOR_WORDS) + r")\s+(" + "|".join(SHAPE_WORDS) + r")\b")
_GLYPH = re.compile(r"\bletter\s+([A-Z])\b")
# The asked detail after the letter, on ink and pattern levels: "the letter K in cyan", "the letter K and checks".
_DETAIL = re.compile(rf"\bletter\s+[A-Z]((?:\s+in\s+[a-z]+)?(?:\s+and\s+(?:{'|'.join(PATTERNS)}))?)")


# ----------------------------------------------------------------------------- goal metrics


def caption_parts(text: str | None) -> tuple[frozenset, frozenset, bool]:
    """(objects as (colour, shape) pairs, letters, says "empty") named in a caption or description."""
    text = text or ""
    objects = frozenset(_OBJECT.findall(text.lower()))
    letters = frozenset(_GLYPH.findall(text))
    return objects, letters, "empty" in text.lower()


def description_matches(description: str | None, caption: str) -> tuple[bool, bool]:
    """(names the right objects, names the right letters) of a description against the crop's caption."""
    d_obj, d_glyph, d_empty = caption_parts(description)
    c_obj, c_glyph, c_empty = caption_parts(caption)
    if c_empty:
        return d_empty and not d_obj, d_empty and not d_glyph
    return d_obj == c_obj, d_glyph == c_glyph


def answer_turn(sample, letter: str, protocol_config) -> str:
    """The oracle's final assistant turn had ``letter`` been the answer (no description: nothing was seen)."""
    import dataclasses

    from mapo.agent import protocol
    from mapo.data.oracle import _final_thought

    alt = dataclasses.replace(sample, answer=letter)
    return protocol.render_assistant_turn(think=_final_thought(alt), answer=letter, config=protocol_config)


@torch.no_grad()
def no_tool_choices(policy, samples: list, protocol_config) -> list[str]:
    """For each sample, the option letter whose answer turn the policy finds most likely given
    only the prompt and the global view (no zoom). Sum of log-probs over the turn's tokens."""
    from mapo.agent import protocol
    from mapo.data.task import tool_config_for
    from mapo.train.sft_data import IGNORE, Transcript, collate, global_view

    letters = []
    model = policy.model
    was_training = model.training
    model.eval()
    for s in samples:
        view = global_view(s.load_image(), tool_config_for(s))
        options = protocol.option_letters(len(s.options))
        transcripts = []
        for letter in options:
            messages = protocol.initial_messages(s.question, s.options, protocol_config)
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer_turn(s, letter, protocol_config)}]})
            text = policy.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            transcripts.append(Transcript(text, [view], s))
        inputs, labels = collate(transcripts, policy, max_length=4096)
        logits = model(**inputs).logits[:, :-1].float()  # (O, T-1, V): O = options
        targets = labels[:, 1:]  # (O, T-1)
        logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (O, T-1)
        score = (logp * (targets != IGNORE)).sum(-1)  # (O,)
        letters.append(options[int(score.argmax())])
    model.train(was_training)
    return letters


def evaluate_goals(policy, samples: list, *, protocol_config=None, max_turns: int = 4, batch_size: int = 32) -> dict[str, float]:
    """The goal metrics on ``samples`` (module docstring has the formulas)."""
    from mapo.algo import crop_iou
    from mapo.data.task import tool_config_for
    from mapo.data.scoring import extract_choice
    from mapo.data.synth import caption_for_crop
    from mapo.agent.protocol import DEFAULT_CONFIG
    from mapo.engine.rollout import RolloutConfig, rollout

    if not samples:
        raise ValueError("evaluate_goals needs at least one sample")
    pc = protocol_config or DEFAULT_CONFIG
    rc = RolloutConfig(
        group_size=1, greedy=True, max_turns=max_turns, max_new_tokens_per_turn=96,
        batch_size=min(batch_size, len(samples)), tool=tool_config_for(samples[0]), protocol=pc,
    )
    trajectories = rollout(samples, policy, rc)
    hits, correct, obj_ok, glyph_ok, detail_ok, ious = [], [], [], [], [], []
    for t in trajectories:
        s = t.sample
        letter = extract_choice(t.answer_text, s.options) if t.answer_text is not None else None
        correct.append(letter == s.answer)
        row = crop_iou.crop_ious(t, untargeted_iou=0.0)  # the held-out definition SFT logs
        ious.extend(row)
        hits.append(crop_iou.first_zoom_hit(row))
        for call, description in zip(t.tool_calls, t.descriptions):
            if call.region is None or description is None:
                continue
            caption = caption_for_crop(s, call.region)
            o, g = description_matches(description, caption)
            obj_ok.append(o)
            glyph_ok.append(g)
            details = frozenset(d.strip() for d in _DETAIL.findall(caption)) - {""}
            if details:  # the letters' colours or the patterns, where the level draws and asks them
                said = frozenset(d.strip() for d in _DETAIL.findall(description)) - {""}
                detail_ok.append(said == details)
    no_tool = no_tool_choices(policy, samples, pc)
    return {
        "n": float(len(samples)),
        "first_zoom_hit": float(np.mean(hits)),
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "accuracy_tool": float(np.mean(correct)),
        "accuracy_no_tool": float(np.mean([c == s.answer for c, s in zip(no_tool, samples)])),
        "chance": float(np.mean([1.0 / len(s.options) for s in samples])),
        "description_object": float(np.mean(obj_ok)) if obj_ok else 0.0,
        "description_glyph": float(np.mean(glyph_ok)) if glyph_ok else 0.0,
        "description_detail": float(np.mean(detail_ok)) if detail_ok else None,
        "described_crops": float(len(obj_ok)),
        "tool_use_rate": float(np.mean([t.used_tool for t in trajectories])),
    }


def heldout(level: str, n: int, synth_overrides: dict | None = None) -> list:
    from mapo.data import synth

    return synth.generate(n, seed=EVAL_SEED, config=synth.level_config(level, **(synth_overrides or {})))


def _policy_dir(run_dir: Path, step: int | None) -> Path:
    """``RUN_DIR/final``, or the model of checkpoint ``step`` (``mapo sft`` keeps them as step_NNNNNN/model)."""
    return run_dir / "final" if step is None else run_dir / "checkpoints" / f"step_{step:06d}" / "model"


def run_config(run_dir: Path):
    """The :class:`mapo.train.sft.SFTConfig` an SFT run was started with (``RUN_DIR/config.yaml``)."""
    import yaml

    from mapo.core.config import from_dict
    from mapo.train.sft import SFTConfig

    return from_dict(SFTConfig, yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))


def goals_for_run(run_dir: str | Path, level: str, n: int, step: int | None = None) -> dict[str, float]:
    """Goal metrics of ``RUN_DIR/final`` (or of checkpoint ``step``) on ``n`` held-out samples of ``level``.

    Saved to ``RUN_DIR/goals_<level>.json`` (``goals_<level>_step<N>.json`` for a checkpoint).
    """
    from mapo.policy import load_policy

    run_dir = Path(run_dir)
    policy = load_policy(_policy_dir(run_dir, step))
    started = time.perf_counter()
    # The run's own prompts and image knobs (e.g. data.synth.texture_strength): what it was trained on.
    trained = run_config(run_dir)
    out = evaluate_goals(policy, heldout(level, n, trained.data.synth), protocol_config=policy.protocol or trained.protocol)
    out["eval_s"] = time.perf_counter() - started
    name = f"goals_{level}.json" if step is None else f"goals_{level}_step{step}.json"
    (run_dir / name).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- sweep


def run_variant(name: str, root: str | Path, overrides: list[str] | None = None) -> Path:
    """Train variant ``name`` (its base config and overrides, :func:`variant`; or ``overrides`` of
    ``configs/warmstart.yaml`` when given) into ``ROOT/NAME``."""
    from mapo.core.config import load_config
    from mapo.train.sft import SFTConfig, run_sft

    base, overrides = variant(name) if overrides is None else (BASE_CONFIG, overrides)
    cfg = load_config(SFTConfig, base, overrides)
    run_dir = Path(root) / name
    started = time.perf_counter()
    run_sft(cfg, run_dir)
    meta = {"base": base, "overrides": overrides, "wall_s": time.perf_counter() - started}
    (run_dir / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return run_dir


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if pct else f"{value:.2f}"


def train_wall_s(run_dir: Path) -> float | None:
    """Seconds from the run's start (``run.json`` written) to its final policy being saved."""
    start, end = run_dir / "run.json", run_dir / "final" / "model.safetensors"
    return end.stat().st_mtime - start.stat().st_mtime if start.is_file() and end.is_file() else None


_NOT_RECIPE = ("log_every", "eval_every", "save_every", "keep_last", "tensorboard", "threads", "progress", "eval.")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data and not prefix.endswith("synth.") and not prefix.endswith("overrides."):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_diff(run_config: dict, base_config: dict) -> list[str]:
    """``key=value`` for every recipe key where a run's config differs from the base config."""
    run, base = _flat(run_config), _flat(base_config)
    keys = sorted(k for k in set(run) | set(base) if run.get(k) != base.get(k) and not k.startswith(_NOT_RECIPE))
    return [f"{k}={_short(json.dumps(run.get(k), separators=(',', ':')))}" for k in keys]


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (a long system prompt would swamp a table row)."""
    return text if len(text) <= limit else f"{text[: limit - 14]}…({len(text)} chars)"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _last_train_metrics(run_dir: Path) -> dict:
    last: dict = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "train/loss" in row:
            last = row
    return last


def sweep_table(*roots: str | Path, base_config: str = BASE_CONFIG) -> str:
    """Markdown tables from the run directories under ``roots``.

    1. finished runs (``eval.json``): the recipe diff against ``base_config`` (:data:`BASE_CONFIG`), steps,
       training wall time, teacher-forced held-out loss and coordinate-token accuracy, and the goal
       metrics of ``goals_easy.json`` (else the SFT's own 48-sample rollout eval);
    2. goal metrics per checkpoint and per level (every ``goals_<level>[_step<N>].json``);
    3. runs stopped early (no ``eval.json``): their last logged training metrics.
    """
    import yaml

    from mapo.core.config import from_dict, load_config, to_dict
    from mapo.train.sft import SFTConfig

    base = to_dict(load_config(SFTConfig, base_config))
    run_dirs = sorted((p for root in roots for p in Path(root).iterdir() if (p / "config.yaml").is_file()), key=lambda p: p.name)
    finished = [
        f"| run | recipe: differences from {base_config} | steps | train wall | tf loss | tf coord acc "
        "| hit@0.5 (n) | acc tool | acc no-tool | desc object | desc glyph |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    curve = [
        "| run | checkpoint | level | n | hit@0.5 | mean IoU | acc tool | acc no-tool (chance) | desc object | desc glyph "
        "| desc detail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stopped = ["| run | recipe | stopped at step | train loss | train coord acc |", "|---|---|---|---|---|"]
    for run_dir in run_dirs:
        run_config = from_dict(SFTConfig, yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
        diff = " ".join(config_diff(to_dict(run_config), base)) or "(base)"  # keys added since count as defaults
        ev = _read_json(run_dir / "eval.json")
        if not ev:
            last = _last_train_metrics(run_dir)
            stopped.append(
                f"| {run_dir.name} | {diff} | {last.get('step', 0)} | {last.get('train/loss', float('nan')):.3f} "
                f"| {_fmt(last.get('train/coord_token_acc'))} |"
            )
            continue
        goals = _read_json(run_dir / "goals_easy.json")
        hit = goals.get("first_zoom_hit", ev.get("heldout/first_zoom_hit@0.5"))
        n = int(goals.get("n", ev.get("heldout/n", 0)))
        wall = train_wall_s(run_dir)
        finished.append(
            f"| {run_dir.name} | {diff} | {ev.get('step')} | {f'{wall / 60:.0f} min' if wall else '–'} "
            f"| {ev.get('eval/loss', float('nan')):.3f} | {_fmt(ev.get('eval/coord_token_acc'))} | {_fmt(hit)} ({n}) "
            f"| {_fmt(goals.get('accuracy_tool', ev.get('heldout/accuracy')))} | {_fmt(goals.get('accuracy_no_tool'))} "
            f"| {_fmt(goals.get('description_object'))} | {_fmt(goals.get('description_glyph'))} |"
        )
    for run_dir in run_dirs:
        for path in sorted(run_dir.glob("goals_*.json"), key=_goals_sort_key):
            level, step = _goals_order(path)
            g = _read_json(path)
            curve.append(
                f"| {run_dir.name} | {'final' if step == 1 << 30 else f'step {step}'} | {level} | {int(g['n'])} "
                f"| {_fmt(g['first_zoom_hit'])} | {g['mean_iou']:.2f} | {_fmt(g['accuracy_tool'])} "
                f"| {_fmt(g['accuracy_no_tool'])} ({_fmt(g['chance'])}) | {_fmt(g['description_object'])} "
                f"| {_fmt(g['description_glyph'])} | {_fmt(g.get('description_detail'))} |"
            )
    out = ["Finished runs:", "", *finished, "", "Goal metrics (held-out, greedy, `goals` command):", "", *curve]
    if len(stopped) > 2:
        out += ["", "Runs stopped early (no held-out evaluation):", "", *stopped]
    return "\n".join(out)


_LEVEL_ORDER = (
    "easy", "distractors", "medium", "hard", "ink", "ink_distractors", "closeup", "pattern", "pattern_distractors",
)


def _goals_sort_key(path: Path) -> tuple[int, int]:
    level, step = _goals_order(path)
    return step, _LEVEL_ORDER.index(level) if level in _LEVEL_ORDER else len(_LEVEL_ORDER)


def _goals_order(path: Path) -> tuple[str, int]:
    """(level, step) of ``goals_<level>[_step<N>].json``; final sorts after every checkpoint."""
    m = re.fullmatch(r"goals_([a-z_]+?)(?:_step(\d+))?\.json", path.name)
    level, step = (m.group(1), int(m.group(2)) if m.group(2) else 1 << 30) if m else (path.stem, 0)
    return level, step


# ----------------------------------------------------------------------------- letter diagnosis


@torch.no_grad()
def letter_diagnosis(run_dir: str | Path, n: int = 64, *, hint: bool = False, step: int | None = None) -> dict[str, float]:
    """Where the policy's letters come from, teacher-forced on ``n`` held-out oracle transcripts.

    An easy transcript carries three letters: the glyph in the description (only the crop
    shows it), the same glyph repeated in the final thought (a copy of the description a few
    tokens back) and the answer letter (a lookup: which option holds that glyph). For each
    the mean negative log-likelihood of the true token, against the reference values of a
    policy that uses no context: ln(21) = 3.04 for a glyph (uniform over
    ``mapo.data.synth_render.GLYPHS``), ln(4) = 1.39 for the answer. ``*_mass_on_options`` is the
    probability the policy puts on the question's four option glyphs (4/21 = 0.19 without
    reading the prompt). With ``hint`` every prompt also states the glyph (``data.glyph_hint=1``):
    then the description glyph needs only a copy from the prompt. ``step`` reads checkpoint
    step_N instead of ``final/``. Written to ``RUN_DIR/letters[_hint][_step<N>].json``.
    """
    from mapo.policy import load_policy
    from mapo.data.synth_render import GLYPHS
    from mapo.train.sft_data import IGNORE, collate, heldout_samples, make_transcript

    from mapo.train.sft_data import synth_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    asks = synth_config(cfg.data).asks
    if asks != "letter":
        raise ValueError(f"{run_dir} was trained on a level that asks {asks!r}, not the letter; see the words command")
    policy = load_policy(_policy_dir(run_dir, step))
    samples = heldout_samples(cfg, n)
    data = dataclasses.replace(cfg.data, glyph_hint=1.0 if hint else 0.0)  # default: the letter is only in the crop
    transcripts = [
        make_transcript(s, policy.processor, seed=cfg.eval.seed * 1_000_003 + i, data=data, protocol=cfg.protocol)
        for i, s in enumerate(samples)
    ]
    sums: dict[str, list[float]] = {}
    for start in range(0, n, 16):
        chunk = samples[start : start + 16]
        inputs, labels = collate(transcripts[start : start + 16], policy, cfg.data.max_length)
        logp = torch.log_softmax(policy.model(**inputs).logits[:, :-1].float(), -1)  # (B, T-1, V)
        targets = labels[:, 1:]  # (B, T-1)
        for b, sample in enumerate(chunk):
            option_ids = [policy.tokenizer.convert_tokens_to_ids("Ġ" + o) for o in sample.options]
            roles = iter(("description_glyph", "thought_glyph", "answer"))
            for k in (targets[b] != IGNORE).nonzero().squeeze(-1).tolist():
                token = policy.tokenizer.convert_ids_to_tokens(int(targets[b, k])).lstrip("Ġ")
                if len(token) != 1 or not "A" <= token <= "Z" or token == "I":
                    continue
                role = next(roles, None)
                if role is None:
                    break
                sums.setdefault(f"{role}_nll", []).append(-float(logp[b, k, targets[b, k]]))
                if role != "answer":
                    mass = float(logp[b, k, option_ids].exp().sum())
                    sums.setdefault(f"{role}_mass_on_options", []).append(mass)
    out = {key: float(np.mean(values)) for key, values in sums.items()}
    out.update(embedding_spread(policy))
    out.update(n=float(n), uniform_glyph_nll=float(np.log(len(GLYPHS))), uniform_answer_nll=float(np.log(4)))
    name = "letters" + ("_hint" if hint else "") + ("" if step is None else f"_step{step}") + ".json"
    (run_dir / name).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


@torch.no_grad()
def word_diagnosis(run_dir: str | Path, n: int = 64, step: int | None = None) -> dict[str, float]:
    """Where the asked word comes from, teacher-forced on ``n`` held-out transcripts of an ink or pattern level.

    Such a transcript names the answer twice, in the description (only the crop shows it: "the
    letter K in cyan", "... and checks") and in the final thought (a copy a few tokens later),
    then answers with that option's letter (options in a fixed order: a function of the word).
    Reported: the mean NLL of the whole word (summed over its tokens) at each place and of the
    answer letter, against ln(4) = 1.39 for a policy that ignores its context (exact when each
    word is one token), and ``tokens_per_word``. ``step`` reads checkpoint step_N instead of
    ``final/``. Written to ``RUN_DIR/words.json`` (``words_step<N>.json``).
    """
    from mapo.policy import load_policy
    from mapo.train.sft_data import collate, heldout_samples, make_transcript, synth_config, token_runs

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if synth_config(cfg.data).asks == "letter":
        raise ValueError(f"{run_dir} was trained on a letter level; words diagnoses ink and pattern levels (see letters)")
    policy = load_policy(_policy_dir(run_dir, step))
    samples = heldout_samples(cfg, n)
    transcripts = [
        make_transcript(s, policy.processor, seed=cfg.eval.seed * 1_000_003 + i, data=cfg.data, protocol=cfg.protocol)
        for i, s in enumerate(samples)
    ]
    sums: dict[str, list[float]] = {"description_word_nll": [], "thought_word_nll": [], "answer_nll": [], "tokens_per_word": []}
    for start in range(0, n, 16):
        chunk = samples[start : start + 16]
        inputs, labels = collate(transcripts[start : start + 16], policy, cfg.data.max_length)
        logp = torch.log_softmax(policy.model(**inputs).logits[:, :-1].float(), -1)  # (B, T-1, V)
        targets = labels[:, 1:]  # (B, T-1): token k + 1 is predicted at position k
        for b, sample in enumerate(chunk):
            word = policy.tokenizer(" " + sample.answer_text, add_special_tokens=False)["input_ids"]
            seq = targets[b].tolist()
            spans = token_runs(seq, word)  # labelled: IGNORE never matches a token id
            answer_id = policy.tokenizer.convert_tokens_to_ids(sample.answer)
            answers = [k for k, t in enumerate(seq) if t == answer_id]
            if len(spans) < 2 or not answers:
                continue
            for role, k in zip(("description_word_nll", "thought_word_nll"), spans[-2:]):
                sums[role].append(-sum(float(logp[b, k + j, t]) for j, t in enumerate(word)))
            sums["answer_nll"].append(-float(logp[b, answers[-1], answer_id]))
            sums["tokens_per_word"].append(float(len(word)))
    out = {key: float(np.mean(values)) if values else float("nan") for key, values in sums.items()}
    out.update(n=float(len(sums["answer_nll"])), uniform_nll=float(np.log(4)))
    name = "words.json" if step is None else f"words_step{step}.json"
    (run_dir / name).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


@torch.no_grad()
def context_effects(run_dir: str | Path, n: int = 16) -> dict[str, float]:
    """Does the policy use its prompt? Mean |change| in nats of one predicted token when one prompt word changes.

    - ``question_colour_effect``: the first thought's colour word ("I need to find the *red* ...")
      when the question's colour word is swapped (red <-> blue): a copy from the question.
    - ``hint_letter_effect``: the description's glyph when the prompt carries
      "Hint: the letter is K." (``data.glyph_hint``) and K is swapped for another letter: a copy
      of a letter from the prompt.

    Each is ``|log p(true token | original) - log p(true token | swapped)|``, teacher-forced on
    ``n`` held-out easy transcripts; 0 means the token ignores that word. Written to
    ``RUN_DIR/context_effects.json``.
    """
    from mapo.data.synth_render import GLYPHS
    from mapo.policy import load_policy
    from mapo.train.sft_data import collate, heldout_samples, make_transcript

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    policy = load_policy(run_dir / "final")
    hinted = dataclasses.replace(cfg.data, glyph_hint=1.0)
    effects: dict[str, list[float]] = {"question_colour_effect": [], "hint_letter_effect": []}
    for i, sample in enumerate(heldout_samples(cfg, n)):
        match = re.search(r"on the (\w+) \w+\?", sample.question)
        if sample.task.family != "glyph" or match is None:
            continue
        colour = match.group(1)
        glyph = sample.options[ord(sample.answer) - ord("A")]
        swaps = {
            "question_colour_effect": (cfg.data, colour, f"on the {colour} ", f"on the {'blue' if colour == 'red' else 'red'} "),
            "hint_letter_effect": (
                hinted, glyph, f"Hint: the letter is {glyph}.", f"Hint: the letter is {next(g for g in GLYPHS if g != glyph)}."
            ),
        }
        for name, (data, word, old, new) in swaps.items():
            original = make_transcript(sample, policy.processor, seed=i, data=data, protocol=cfg.protocol)
            swapped = dataclasses.replace(original, text=original.text.replace(old, new, 1))
            inputs, labels = collate([original, swapped], policy, cfg.data.max_length)
            logp = torch.log_softmax(policy.model(**inputs).logits.float(), -1)  # (2, T, V)
            word_id = policy.tokenizer.convert_tokens_to_ids("Ġ" + word)
            targets = labels[0, 1:]  # token t + 1 is predicted at position t
            k = int((targets == word_id).nonzero()[0])  # its first labelled occurrence
            effects[name].append(abs(float(logp[0, k, word_id] - logp[1, k, word_id])))
    out = {name: float(np.mean(values)) if values else float("nan") for name, values in effects.items()}
    out["n"] = float(len(effects["hint_letter_effect"]))
    (run_dir / "context_effects.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


def embedding_spread(policy) -> dict[str, float]:
    """How distinct the glyph tokens' embeddings are, against the colour words'.

    For a group of tokens: the norm of their mean embedding (what they share) and the mean
    norm of each one's difference from it (what tells them apart). The embeddings are tied
    to the LM head, so tokens that share nearly everything also get nearly equal logits.
    """
    from mapo.data.synth_render import GLYPHS

    weight = policy.model.get_input_embeddings().weight.detach().float()
    out = {}
    for name, words in (("glyph", list(GLYPHS)), ("colour", list(COLOR_WORDS))):
        rows = weight[[policy.tokenizer.convert_tokens_to_ids("Ġ" + w) for w in words]]
        mean = rows.mean(0)
        out[f"{name}_embedding_shared_norm"] = float(mean.norm())
        out[f"{name}_embedding_residual_norm"] = float((rows - mean).norm(dim=-1).mean())
    return out


# ----------------------------------------------------------------------------- figure


def zoom_figure(policy_dir: str | Path, out: str | Path, *, level: str = "easy", n: int = 6, thumb: int = 176) -> Path:
    """Held-out samples with the target box (green) and the policy's zooms (1st orange, later magenta),
    each above the first crop it got back and its description/answer."""
    from PIL import Image, ImageDraw

    from mapo.data.task import tool_config_for
    from mapo.policy import load_policy
    from mapo.engine.rollout import RolloutConfig, rollout

    policy = load_policy(policy_dir)
    samples = heldout(level, n)
    rc = RolloutConfig(group_size=1, greedy=True, max_turns=4, batch_size=n, tool=tool_config_for(samples[0]))
    if policy.protocol is not None:  # prompt it as it was trained
        rc = dataclasses.replace(rc, protocol=policy.protocol)
    trajectories = rollout(samples, policy, rc)
    pad, text_h = 6, 84
    sheet = Image.new("RGB", (n * (thumb + pad) + pad, 2 * thumb + text_h + 3 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, t in enumerate(trajectories):
        image = t.sample.load_image()
        scale = thumb / image.width
        panel = image.resize((thumb, thumb))
        pd = ImageDraw.Draw(panel)
        for b in t.sample.target_boxes:
            pd.rectangle([v * scale for v in b.xyxy], outline=(0, 200, 0), width=3)
        for k, call in enumerate(c for c in t.tool_calls if c.valid):
            pd.rectangle([v * scale for v in call.box_original], outline=(255, 140, 0) if k == 0 else (220, 0, 220), width=2)
        x = pad + i * (thumb + pad)
        sheet.paste(panel, (x, pad))
        crop = next((c for c in t.crops if c is not None), None)
        if crop is not None:
            sheet.paste(crop.resize((thumb, thumb)), (x, thumb + 2 * pad))
        desc = next((d for d in t.descriptions if d), "") or ""
        said = textwrap.wrap(f"said: {desc}", 36)[:3]  # three lines: the asked detail comes last
        lines = [t.sample.question[:36], *said, f"answer {t.answer_text} (true {t.sample.answer})"]
        draw.multiline_text((x, 2 * thumb + 3 * pad), "\n".join(lines), fill="black", spacing=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python research/warmstart_sweep.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="train sweep variants")
    p.add_argument("names", nargs="+", help=f"variants: {', '.join([*VARIANTS, *FIRST_VARIANTS])}")
    p.add_argument("--root", default="runs/warmstart")
    p = sub.add_parser("goals", help="goal metrics of RUN_DIR/final on held-out samples")
    p.add_argument("run_dir")
    p.add_argument("--level", default="easy")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--step", type=int, default=None, help="evaluate checkpoint step_N instead of final/")
    p = sub.add_parser("table", help="print the sweep tables")
    p.add_argument("--base", default=BASE_CONFIG, help=f"recipes are shown as differences from this (e.g. {FIRST_CONFIG})")
    p.add_argument("--root", nargs="+", default=["runs/warmstart", "runs/warmstart_stopped"])
    p = sub.add_parser("letters", help="teacher-forced NLL of the glyph and answer letters -> RUN_DIR/letters.json")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--hint", action="store_true", help="every prompt also states the glyph (can it copy?)")
    p.add_argument("--step", type=int, default=None, help="read checkpoint step_N instead of final/")
    p = sub.add_parser("words", help="teacher-forced NLL of the asked word and answer (ink, pattern levels) -> RUN_DIR/words.json")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--step", type=int, default=None, help="read checkpoint step_N instead of final/")
    p = sub.add_parser("context", help="does the policy use its prompt? -> RUN_DIR/context_effects.json")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=16)
    p = sub.add_parser("figure", help="figure of a policy's zooms on held-out samples")
    p.add_argument("policy_dir")
    p.add_argument("--out", default="docs/img/warmstart_zooms.png")
    p.add_argument("--level", default="easy")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.cmd == "run":
            for name in args.names:
                print(f"{name}: {run_variant(name, args.root)}")
        elif args.cmd == "goals":
            print(json.dumps(goals_for_run(args.run_dir, args.level, args.n, args.step), indent=2))
        elif args.cmd == "letters":
            print(json.dumps(letter_diagnosis(args.run_dir, args.n, hint=args.hint, step=args.step), indent=2))
        elif args.cmd == "words":
            print(json.dumps(word_diagnosis(args.run_dir, args.n, args.step), indent=2))
        elif args.cmd == "context":
            print(json.dumps(context_effects(args.run_dir, args.n), indent=2))
        elif args.cmd == "table":
            print(sweep_table(*(r for r in args.root if Path(r).is_dir()), base_config=args.base))
        else:
            print(zoom_figure(args.policy_dir, args.out, level=args.level))
    except (ValueError, FileNotFoundError) as e:  # a bad name or an unfinished run: say so, no traceback
        print(f"warmstart_sweep {args.cmd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
