"""Oracle demonstrations: well-formed multi-turn zoom-in transcripts built from ground truth.

:func:`oracle_trajectory` turns a :class:`~mapo.data.Sample` with target boxes
into the transcript a perfect agent would write: think, zoom on the target
(through :func:`mapo.agent.tools.zoom_in`, the same coordinate code as training and
evaluation), describe what the crop *actually* shows (the ground-truth
:func:`~mapo.data.synth.caption_for_crop` of the crop's original-pixel box),
and answer. Used for the SFT warm start and as a protocol fixture.

Imperfection is controllable, so the warm start also shows recovery:

- ``jitter``: each box corner moves by up to ``jitter`` x the box side; if the
  jittered crop no longer holds most of the target, the next turn says so and
  zooms again on the exact box.
- ``wrong_first_zoom``: with this probability the first zoom lands on a
  distractor (or an empty cell), the description says what is there, and the
  next turn looks elsewhere.
- ``search_misses``: a search. The oracle visits the objects in a random order
  until it reaches the target, at most ``search_misses`` distractors first;
  each miss is described as it is and followed by "not here, look elsewhere".
  The number of misses is the target's place in a random order of the objects
  (capped), so a policy that cannot yet tell the asked object in the global view
  learns to visit objects, read each one, and stop when it has found it.
- ``view_scan``: before the first zoom the thought goes through the grid's
  cells in reading order, naming what each holds at the place the policy would
  write for it (``(31, 3) red square. (59, 3) empty.``), then says where the
  asked object is. Finding it becomes reading each cell at a written place and
  copying the place next to the matching words, the same move that
  ``option_scan`` makes for the answer letter. Synthetic grid tasks only.

Departure: the paper's demonstrations (if any) are not public; the think texts
here are fixed templates over a small vocabulary so a tokenizer trained on
them stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mapo.agent import protocol, tools
from mapo.data.sample import Box, Sample
from mapo.data.synth import caption_for_crop
from mapo.data.task import tool_config_for


RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


@dataclass
class OracleTrajectory:
    """One demonstration.

    ``messages`` are Hugging Face chat messages (system, user with the image,
    then assistant / observation turns); ``images`` are in sequence order (the
    global image, then each crop); ``assistant_texts[j]`` is the text of
    assistant segment ``j``; ``boxes_view[k]`` is the ``bbox_2d`` (integers,
    view pixels) of the k-th tool call, ``boxes_original[k]`` the box the tool
    actually cropped (original pixels) and ``descriptions[k]`` the caption of
    that crop written in the following turn.
    """

    messages: list[dict]
    images: list[Image.Image]
    assistant_texts: list[str]
    boxes_view: list[tuple[int, int, int, int]]
    boxes_original: list[tuple[float, float, float, float]] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)


def oracle_trajectory(
    sample: Sample,
    *,
    rng_or_seed: int | np.random.Generator,
    jitter: float = 0.0,
    wrong_first_zoom: float = 0.0,
    tool_config: tools.ToolConfig | None = None,
    protocol_config: protocol.ProtocolConfig | None = None,
    option_scan: bool = False,
    search_misses: int = 0,
    view_scan: bool = False,
) -> OracleTrajectory:
    """The oracle's transcript for ``sample`` (which needs at least one target box).

    Deterministic given ``rng_or_seed`` (an int seed or a numpy Generator). With
    ``option_scan`` the final thought goes through the options in order, copying
    each and saying whether it is the answer, up to the correct one
    (``(A) bands: no. (B) checks: yes.``): finding the answer's letter becomes
    copying and comparing nearby text instead of one long-range lookup.
    """
    if not isinstance(sample, Sample):
        raise ValueError(f"sample must be a mapo.data.Sample, got {type(sample).__name__}")
    if not sample.target_boxes:
        raise ValueError(f"sample {sample.id}: the oracle needs ground-truth target boxes (Box.is_target)")
    if not (0.0 <= jitter <= 1.0 and 0.0 <= wrong_first_zoom <= 1.0):
        raise ValueError(f"jitter and wrong_first_zoom must be in [0, 1], got {jitter}, {wrong_first_zoom}")
    if search_misses < 0:
        raise ValueError(f"search_misses must be >= 0, got {search_misses}")
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    tc = tool_config or tool_config_for(sample)
    pc = protocol_config or protocol.DEFAULT_CONFIG
    image = sample.load_image(max_pixels=tc.max_image_pixels)
    builder = _Builder(sample, image, tools.view_size(image.size, tc), tc, pc)

    targets = sample.target_boxes
    think = f"I need to find the {targets[0].label or 'target'}."
    if view_scan:
        think += " " + view_scan_text(builder)
    for decoy in _search_decoys(builder, rng, search_misses) if search_misses else ():
        # The same words as the zoom on the target: before the crop the searcher cannot know it will miss.
        builder.zoom(think=think + " I will zoom in on it.", box_view=builder.to_view(decoy), label=targets[0].label)
        think = f"The {targets[0].label or 'target'} is not here. I will look elsewhere."
    if rng.random() < wrong_first_zoom:
        decoy = _decoy_box(builder, rng)
        builder.zoom(think=think + " I will zoom in here.", box_view=builder.to_view(decoy), label=targets[0].label)
        think = f"The {targets[0].label or 'target'} is not here. I will look elsewhere."
    for i, target in enumerate(targets):
        box_view = _jittered(builder.to_view(target), jitter, builder.view_wh, rng)
        crop_box = builder.zoom(think=think + " I will zoom in on it.", box_view=box_view, label=target.label)
        if not _mostly_inside(target, crop_box):
            # The jittered crop missed: say so and zoom on the exact box (a recovery example).
            think = f"I do not see the {target.label or 'target'} clearly. I will zoom in again."
            builder.zoom(think=think, box_view=builder.to_view(target), label=target.label)
        if i + 1 < len(targets):
            think = f"I found the {target.label}. Now I need to find the {targets[i + 1].label}."
    think = _final_thought(sample)
    if option_scan and sample.options and sample.answer:
        think += " " + option_scan_text(sample.options, sample.answer)
    builder.finish(think=think, answer=sample.answer or sample.answer_text)
    return builder.result()


class _Builder:
    """Accumulates messages, images and texts; each observation's description opens the next turn."""

    def __init__(self, sample: Sample, image: Image.Image, view_wh, tc: tools.ToolConfig, pc: protocol.ProtocolConfig):
        self.sample, self.image, self.view_wh, self.tc, self.pc = sample, image, view_wh, tc, pc
        self.messages = protocol.initial_messages(sample.question, sample.options, pc)
        self.images: list[Image.Image] = [image]
        self.texts: list[str] = []
        self.boxes_view: list[tuple[int, int, int, int]] = []
        self.boxes_original: list[tuple[float, float, float, float]] = []
        self.descriptions: list[str] = []
        self.pending_description: str | None = None

    def to_view(self, box: Box) -> tuple[int, int, int, int]:
        """The whole-pixel view box covering ``box`` (floor the top-left, ceil the bottom-right)."""
        x1, y1, x2, y2 = tools.original_to_view(box.xyxy, self.view_wh, self.image.size)
        vw, vh = self.view_wh
        return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(vw, math.ceil(x2)), min(vh, math.ceil(y2)))

    def crop_box(self, box: Box) -> tuple[float, float, float, float]:
        """The original-pixel box the tool would crop for the oracle's view box of ``box``."""
        box_view, error = tools.validate_box(self.to_view(box), self.view_wh, self.tc)
        if error is not None:
            raise RuntimeError(f"sample {self.sample.id}: box {box} rejected by the tool: {error}")
        return tuple(tools.view_to_original(box_view, self.view_wh, self.image.size))

    def _say(self, text: str) -> None:
        self.texts.append(text)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})

    def zoom(self, *, think: str, box_view: tuple[int, int, int, int], label: str) -> tuple[float, float, float, float]:
        text = protocol.render_assistant_turn(
            description=self.pending_description, think=think, bbox=list(box_view), label=label or None, config=self.pc
        )
        self._say(text)
        result = tools.zoom_in(self.image, box_view, self.view_wh, self.tc)
        if result.error is not None:  # the oracle only emits in-image boxes; this is a bug, not data
            raise RuntimeError(f"sample {self.sample.id}: oracle box {box_view} rejected: {result.error}")
        self.messages.append(protocol.observation_message(self.pc))
        self.images.append(result.crop)
        self.boxes_view.append(tuple(int(v) for v in box_view))
        self.boxes_original.append(tuple(result.box_original))
        self.pending_description = caption_for_crop(self.sample, result.box_original)
        self.descriptions.append(self.pending_description)
        return result.box_original

    def finish(self, *, think: str, answer: str) -> None:
        self._say(
            protocol.render_assistant_turn(description=self.pending_description, think=think, answer=answer, config=self.pc)
        )

    def result(self) -> OracleTrajectory:
        return OracleTrajectory(
            self.messages, self.images, self.texts, self.boxes_view, self.boxes_original, self.descriptions
        )


def _final_thought(sample: Sample) -> str:
    targets = sample.target_boxes
    family = sample.task.family if sample.task else None
    if family == "glyph":
        return f"The letter on the {targets[0].label} is {sample.answer_text}."
    if family == "pattern":
        return f"The pattern on the {targets[0].label} is {sample.answer_text}."
    if family == "ink":
        return f"The letter on the {targets[0].label} is {sample.answer_text}."  # "... is cyan."
    if family == "relative" and len(targets) >= 2 and sample.answer_text in RELATION_WORDS:
        return f"The {targets[0].label} is {RELATION_WORDS[sample.answer_text]} the {targets[1].label}."
    return f"The answer is {sample.answer_text}."


def option_scan_text(options: list[str], answer: str) -> str:
    """``(A) bands: no. (B) checks: yes.``: the options in order, up to the correct letter ``answer``."""
    letters = protocol.option_letters(len(options))
    lines = []
    for letter, option in zip(letters, options):
        lines.append(f"({letter}) {option}: {'yes' if letter == answer else 'no'}.")
        if letter == answer:
            break
    return " ".join(lines)


def _jittered(box, jitter: float, view_wh, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Move each corner by up to ``jitter`` x the box side; keep it inside the view with a positive size."""
    if jitter <= 0:
        return box
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    dx1, dy1, dx2, dy2 = rng.uniform(-jitter, jitter, size=4)
    vw, vh = view_wh
    nx1 = min(max(0, round(x1 + dx1 * w)), vw - 1)
    ny1 = min(max(0, round(y1 + dy1 * h)), vh - 1)
    nx2 = max(min(vw, round(x2 + dx2 * w)), nx1 + 1)
    ny2 = max(min(vh, round(y2 + dy2 * h)), ny1 + 1)
    return (int(nx1), int(ny1), int(nx2), int(ny2))


def _mostly_inside(target: Box, crop_box: Any, min_inside: float = 0.5) -> bool:
    x1, y1, x2, y2 = crop_box
    ix = max(0.0, min(x2, target.x2) - max(x1, target.x1))
    iy = max(0.0, min(y2, target.y2) - max(y1, target.y1))
    return ix * iy >= min_inside * target.area


def view_scan_text(builder: _Builder) -> str:
    """``I see: (3, 3) nothing. (31, 3) red square. ... The red square is at (31, 3).``: every grid cell in
    reading order at the top-left corner the policy's box would have, then the asked object's place."""
    sample = builder.sample
    if sample.task is None or not sample.task.grid or not sample.boxes:
        raise ValueError(f"sample {sample.id}: view_scan needs a synthetic grid task (task.grid) with object boxes")
    grid = sample.task.grid
    w, h = builder.image.size
    cw, ch = w / grid, h / grid
    side_w, side_h = sample.boxes[0].x2 - sample.boxes[0].x1, sample.boxes[0].y2 - sample.boxes[0].y1
    entries, found = [], None
    for r in range(grid):
        for c in range(grid):
            cell = Box(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)
            held = [b for b in sample.boxes if cell.x1 <= b.center[0] < cell.x2 and cell.y1 <= b.center[1] < cell.y2]
            box = held[0] if held else Box(
                cell.center[0] - side_w / 2, cell.center[1] - side_h / 2, cell.center[0] + side_w / 2, cell.center[1] + side_h / 2
            )
            x1, y1, _, _ = builder.to_view(box)
            entries.append(f"({x1}, {y1}) {held[0].label if held else 'empty'}.")
            if held and held[0].is_target and found is None:
                found = (x1, y1)
    where = f" The {sample.target_boxes[0].label} is at ({found[0]}, {found[1]})." if found else ""
    return "I see: " + " ".join(entries) + where


def _search_decoys(builder: _Builder, rng: np.random.Generator, max_misses: int) -> list[Box]:
    """The distractors a random-order search visits before the target: the target's place in a random
    permutation of the objects, capped at ``max_misses``; distractors whose crop holds a target are left out."""
    sample = builder.sample
    clear = [
        b for b in sample.boxes
        if not b.is_target and not any(_mostly_inside(t, builder.crop_box(b), 0.25) for t in sample.target_boxes)
    ]
    order = rng.permutation(len(clear) + 1)  # index len(clear) stands for the target
    place = int(np.flatnonzero(order == len(clear))[0])
    return [clear[int(i)] for i in order[: min(place, max_misses)]]


def _decoy_box(builder: _Builder, rng: np.random.Generator) -> Box:
    """A plausible wrong place: a distractor object if any, else an empty cell; its crop holds no target."""
    sample = builder.sample
    w, h = builder.image.size
    grid = sample.task.grid if sample.task else 4
    cw, ch = w / grid, h / grid
    cells = [Box(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch) for r in range(grid) for c in range(grid)]
    for candidates in ([b for b in sample.boxes if not b.is_target], cells):
        clear = [b for b in candidates if not any(_mostly_inside(t, builder.crop_box(b), 0.25) for t in sample.target_boxes)]
        if clear:
            return clear[int(rng.integers(len(clear)))]
    raise ValueError(f"sample {sample.id}: no place without a target for a wrong first zoom")
