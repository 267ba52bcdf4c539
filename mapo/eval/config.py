"""``mapo eval``'s settings (:class:`EvalConfig`), where their values come from, and the presets.

An evaluation's config is built in layers, each a mapping of knobs over the one below
(:func:`eval_config`; ``mapo eval --show-config`` prints the result, and ``metrics.json``
stores it):

1. mapo's defaults (:class:`EvalConfig`: greedy, one episode per sample, the tiny task's
   224x224 pixel budget, 96 new tokens per turn);
2. the model's own settings (:func:`model_layer`, from the checkpoint's JSON files through
   :func:`mapo.policy.settings.read_model_settings`): the view and observation pixel
   budgets are its processor's range; the token limits are its context and, for a
   published checkpoint, its ``generation_config.json`` ``max_new_tokens``;
3. the preset (:data:`PRESETS`: ``mapo``, or a benchmark's published protocol);
4. the ``--config`` file, then ``KEY=VALUE`` overrides.

Synthetic samples still use the budgets their task was made for (``tool_from_data``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mapo.core.config import knob
from mapo.core.renames import EVAL_CONFIG_KEYS
from mapo.data.benchmarks import scored_benchmarks
from mapo.engine.rollout import RolloutConfig


DEEPEYES_SYSTEM = """You are a helpful assistant.

# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type":"function","function":{"name":"image_zoom_in_tool","description":"Zoom in on a specific region of an image by cropping it based on a bounding box (bbox) and an optional object label.","parameters":{"type":"object","properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the object in the specified bounding box (optional)."}},"required":["bbox"]}}}
</tools>

# How to call a tool
Return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>

**Example**:
<tool_call>
{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 100, 200], "label": "the apple on the desk"}}
</tool_call>"""

DEEPEYES_INSTRUCTION = (
    "Think first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
    "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer> "
)

DEEPEYES_MIN_PIXELS = 4 * 28 * 28
DEEPEYES_MAX_PIXELS = 16384 * 28 * 28


def _deepeyes(max_new_tokens: int) -> dict[str, Any]:
    """DeepEyes' eval protocol (Visual-Agent/DeepEyes ``eval/eval_vstar.py``, ``eval/eval_hrbench.py``).

    Both scripts: the system prompt and instruction above, ``MIN_PIXELS = 4*28*28`` and
    ``MAX_PIXELS = 16384*28*28`` for the image and every crop, temperature 0, and at most 11
    model calls per question (``try_count > 10`` stops the loop), so 11 turns and up to 10
    crops besides the image. They differ in ``max_tokens`` per call: 10240 for V*, 8192 for HR-Bench.
    """
    budgets = {key: value for prefix in ("view", "obs")
               for key, value in ((f"{prefix}_min_pixels", DEEPEYES_MIN_PIXELS), (f"{prefix}_max_pixels", DEEPEYES_MAX_PIXELS))}
    return {
        "tool_from_data": False,
        "rollout": {
            "max_turns": 11, "max_images": 11, "max_new_tokens_per_turn": max_new_tokens, "tool": budgets,
            "protocol": {"system_template": DEEPEYES_SYSTEM, "answer_instruction": DEEPEYES_INSTRUCTION,
                         "observation_instruction": DEEPEYES_INSTRUCTION},
        },
    }


@dataclass(frozen=True)
class Preset:
    """A named protocol: the knobs it sets over the model's settings, and where they were published."""

    help: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "mapo": Preset("mapo's own protocol, at the model's budgets", {}),
    "deepeyes": Preset(
        "DeepEyes' V* protocol (Visual-Agent/DeepEyes eval/eval_vstar.py): its prompts, 3136..12845056 px, "
        "11 turns, 10240 tokens per turn", _deepeyes(10240)),
    "deepeyes-hrbench": Preset(
        "DeepEyes' HR-Bench protocol (Visual-Agent/DeepEyes eval/eval_hrbench.py): as deepeyes, 8192 tokens per turn",
        _deepeyes(8192)),
}


def deepeyes_rollout(base: RolloutConfig) -> RolloutConfig:
    """``base`` with DeepEyes' prompts, observation text and pixel budgets (the ``deepeyes`` preset's rollout)."""
    from mapo.core.config import from_dict, to_dict

    from mapo.core.config_files import merge

    return from_dict(RolloutConfig, merge(to_dict(base), PRESETS["deepeyes"].values["rollout"]))


def _default_rollout() -> RolloutConfig:
    return RolloutConfig(group_size=1, greedy=True, batch_size=8)


@dataclass(frozen=True)
class EvalConfig:
    """How ``mapo eval`` plays and records the agent."""

    # Config files and overrides written before a key was renamed keep working: old name -> new name.
    renamed_keys: ClassVar[dict[str, str]] = EVAL_CONFIG_KEYS

    preset: str = knob(
        "mapo", "the preset layered under this config: " + "; ".join(f"{k}: {p.help}" for k, p in PRESETS.items())
    )
    rollout: RolloutConfig = knob(factory=_default_rollout, help="agent loop: greedy, one episode per sample")
    tool_from_data: bool = knob(True, "use the pixel budgets generated samples were made for (their task spec)")
    benchmark: str | None = knob(None, f"scorer ({', '.join(scored_benchmarks())}); None: from the samples' meta source")
    image_max_side: int = knob(768, "long side of the input-image copy saved for the report (boxes stay in original px)")
    hit_iou: float = knob(0.5, "a crop hits a target when IoU >= this")
    verifier_batch_size: int = knob(64, "pairs per verifier forward")
    semantic_target: Literal["description", "label", "both"] = knob(
        "description", "what the verifier scores against each crop, as in `mapo train` (mapo.algo.semantic)"
    )
    scoring: tuple[str, ...] = knob(
        (), "also score multiple choice the way these harnesses read answers (lmms-eval, vlmevalkit, mapo): "
        "metrics.json 'scoring'; 'official' always uses mapo's rule"
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        template = PRESETS[self.preset].values.get("rollout", {}).get("protocol", {}).get("system_template")
        if template is not None and self.rollout.protocol.system_template != template:
            raise ValueError(
                f"preset {self.preset!r} was named but its values were not applied (the system prompt differs); "
                "build the config with mapo.eval.eval_config(preset=...), or `mapo eval --preset`"
            )
        if self.rollout.group_size != 1:
            raise ValueError(
                f"rollout.group_size must be 1 for eval (one episode per sample is scored), got {self.rollout.group_size}"
            )
        if self.image_max_side < 32:
            raise ValueError(f"image_max_side must be >= 32, got {self.image_max_side}")
        if not 0.0 < self.hit_iou <= 1.0:
            raise ValueError(f"hit_iou must be in (0, 1], got {self.hit_iou}")
        from mapo.data.harness import HARNESSES

        unknown = [name for name in self.scoring if name not in HARNESSES]
        if unknown:
            raise ValueError(f"scoring: unknown {unknown}; choose from {', '.join(HARNESSES)}")

    def rollout_config(self) -> RolloutConfig:
        """The rollout as configured (presets and model settings are layered in by :func:`eval_config`)."""
        return self.rollout


# ----------------------------------------------------------------------------- layers

# Tokens per turn for a published checkpoint whose generation_config.json sets no max_new_tokens
# (Qwen's do not): room for a think-and-call turn of an instruct model; mapo's 96 is the tiny task's.
PUBLISHED_MAX_NEW_TOKENS = 2048


def model_layer(model: str | None) -> tuple[dict[str, Any], list[str]]:
    """The knobs the checkpoint at ``model`` sets, and one note per knob saying where it came from.

    - ``rollout.tool.{view,obs}_{min,max}_pixels``: its processor's range;
    - ``rollout.max_total_tokens``: its context (``max_position_embeddings``);
    - ``rollout.max_new_tokens_per_turn``: its ``generation_config.json`` ``max_new_tokens``; for a
      published checkpoint that sets none, :data:`PUBLISHED_MAX_NEW_TOKENS`. A checkpoint mapo
      wrote (it carries ``mapo_protocol.json``) keeps the limits it was trained with, mapo's.

    ``model`` None, a shipped name or a directory without these files sets nothing.
    """
    from pathlib import Path

    from mapo.policy.default import resolve_policy_dir
    from mapo.policy.settings import read_model_settings

    path = resolve_policy_dir(model) if model else None
    if path is None or not Path(path).is_dir():
        return {}, []
    settings = read_model_settings(path)
    rollout: dict[str, Any] = {}
    notes = []
    if settings.min_pixels is not None and settings.max_pixels is not None:
        rollout["tool"] = {f"{kind}_{end}_pixels": value for kind in ("view", "obs")
                           for end, value in (("min", settings.min_pixels), ("max", settings.max_pixels))}
        notes.append(f"view and observation pixels [{settings.min_pixels}, {settings.max_pixels}] "
                     "(its image processor's range)")
    if settings.context is not None:
        rollout["max_total_tokens"] = settings.context
        notes.append(f"{settings.context} tokens per trajectory (its context, config.json max_position_embeddings)")
    mapo_checkpoint = (Path(path) / "mapo_protocol.json").is_file()
    if settings.max_new_tokens is not None:
        rollout["max_new_tokens_per_turn"] = settings.max_new_tokens
        notes.append(f"{settings.max_new_tokens} new tokens per turn (its generation_config.json max_new_tokens)")
    elif not mapo_checkpoint:
        rollout["max_new_tokens_per_turn"] = PUBLISHED_MAX_NEW_TOKENS
        notes.append(f"{PUBLISHED_MAX_NEW_TOKENS} new tokens per turn (its generation_config.json sets none; "
                     "mapo's default for a published checkpoint)")
    return ({"rollout": rollout} if rollout else {}), notes


def eval_config(
    model: str | None = None,
    preset: str | None = None,
    path: str | None = None,
    overrides: Iterable[str] = (),
) -> tuple[EvalConfig, list[str]]:
    """The effective :class:`EvalConfig` of evaluating ``model``: defaults, model, preset, file, overrides.

    Args:
        model: the checkpoint directory (or shipped name) whose settings are layered in.
        preset: a name in :data:`PRESETS`; None = the ``preset`` the file or overrides name, else ``mapo``.
        path: a YAML config file.
        overrides: ``KEY=VALUE`` strings.

    Returns:
        ``(config, notes)``: the config, and one note per knob the model set.
    """
    from mapo.core.config import from_dict

    data, notes = eval_config_data(model, preset, path, overrides)
    return from_dict(EvalConfig, data), notes


def eval_config_data(
    model: str | None = None, preset: str | None = None, path: str | None = None, overrides: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """:func:`eval_config` as plain data (what ``--show-config`` renders even when it does not validate)."""
    from mapo.core.config_files import merge, resolve_data
    from mapo.core.config import to_dict

    overrides = list(overrides)
    base, notes = model_layer(model)
    base = merge(to_dict(EvalConfig()), base)
    if preset is None:  # the file or an override may name it
        preset = resolve_data(EvalConfig, path, overrides, base=base).get("preset", "mapo")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = merge(merge(base, PRESETS[preset].values), {"preset": preset})
    return resolve_data(EvalConfig, path, overrides, base=base), notes
