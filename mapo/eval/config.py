"""``mapo eval``'s settings (:class:`EvalConfig`) and the ``deepeyes`` preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from mapo.config import knob
from mapo.rollout import RolloutConfig


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

DEEPEYES_MAX_PIXELS = 16384 * 28 * 28


def deepeyes_rollout(base: RolloutConfig) -> RolloutConfig:
    """``base`` with DeepEyes' prompts, observation text and pixel budgets."""
    protocol = dataclasses.replace(
        base.protocol,
        system_template=DEEPEYES_SYSTEM,
        answer_instruction=DEEPEYES_INSTRUCTION,
        observation_instruction=DEEPEYES_INSTRUCTION,
    )
    tool = dataclasses.replace(
        base.tool, view_min_pixels=4 * 28 * 28, view_max_pixels=DEEPEYES_MAX_PIXELS,
        obs_min_pixels=4 * 28 * 28, obs_max_pixels=DEEPEYES_MAX_PIXELS,
    )
    return dataclasses.replace(base, protocol=protocol, tool=tool)


def _default_rollout() -> RolloutConfig:
    return RolloutConfig(group_size=1, greedy=True, batch_size=8)


@dataclass(frozen=True)
class EvalConfig:
    """How ``mapo eval`` plays and records the agent."""

    preset: Literal["mapo", "deepeyes"] = knob("mapo", "protocol preset: mapo's own, or DeepEyes' prompts and budgets")
    rollout: RolloutConfig = knob(factory=_default_rollout, help="agent loop: greedy, one episode per sample")
    tool_from_samples: bool = knob(True, "use the pixel budgets generated samples were made for (their task spec)")
    benchmark: str | None = knob(None, "scorer (vstar, hrbench, mme, synth); None: from the samples' meta source")
    image_max_side: int = knob(768, "long side of the input-image copy saved for the report (boxes stay in original px)")
    hit_iou: float = knob(0.5, "a crop hits a target when IoU >= this")
    verifier_batch_size: int = knob(64, "pairs per verifier forward")
    semantic_target: Literal["description", "label", "both"] = knob(
        "description", "what the verifier scores against each crop, as in `mapo train` (mapo.semantic)"
    )
    scoring: tuple[str, ...] = knob(
        (), "also score multiple choice the way these harnesses read answers (lmms-eval, vlmevalkit, mapo): "
        "metrics.json 'scoring'; 'official' always uses mapo's rule"
    )

    def __post_init__(self) -> None:
        if self.preset not in ("mapo", "deepeyes"):
            raise ValueError(f"preset must be 'mapo' or 'deepeyes', got {self.preset!r}")
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
        return deepeyes_rollout(self.rollout) if self.preset == "deepeyes" else self.rollout
