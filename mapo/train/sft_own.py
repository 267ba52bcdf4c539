"""``mapo sft`` on your own conversations (``data.source``): an eval's ``predictions.jsonl`` or an SFT parquet.

Two sources, read into :class:`Conversation` s (chat messages with ``{"type": "image"}`` parts and the
images in the order the parts appear), which :func:`transcripts` renders with the policy's chat
template exactly as the synthetic oracle's transcripts are (:mod:`mapo.train.sft_data`; labels are
the assistant turns only):

- **mapo trajectories**: the ``predictions.jsonl`` that ``mapo eval`` writes (:mod:`mapo.eval.record`),
  by default only the rows it scored correct (``data.only_correct``). Each row becomes the
  conversation the agent had: the SFT run's system prompt and user prompt (its ``protocol``), the
  global image resized to the ``view_size`` the model saw (from the record's image file, which may be
  a downscaled copy), each assistant turn's raw text, and after each tool call the observation
  message with the saved crop (or the tool's error text). Rows without an image file are skipped.
- **an SFT parquet** in the DeepEyes / verl multi-turn layout: a ``messages`` column of chat lists
  (``role`` system / user / assistant / tool, ``content`` a string in which each ``<image>`` marks the
  next image) and an ``images`` column of ``{"bytes"}`` (or ``{"path"}``, relative to the file) in
  the same order; ``tool`` messages take the protocol's ``observation_role``. A row whose ``<image>``
  count differs from its images, or without an assistant message, is skipped.

Skipped rows are counted and the first reasons printed; a source with no usable row is refused at
start. Order and resume: example ``i`` is conversation ``perm_epoch(i mod n)`` (a seeded permutation
per epoch), a pure function of the cursor. The last ``eval.n_teacher_forced`` conversations are
held out for the teacher-forced evaluation (fewer when the source is small: at most a quarter).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_MARK = "<image>"


@dataclass
class Conversation:
    """Chat messages (``{"type": "image"}`` parts in order) and their images, as the policy should see them."""

    messages: list[dict]
    images: list[Image.Image]
    id: str


def load_conversations(source: str | Path, protocol: Any, *, only_correct: bool = True) -> list[Conversation]:
    """The usable conversations of ``source`` (``predictions.jsonl``, or a ``.parquet``); ValueError if none."""
    path = Path(source)
    if path.is_dir() and (path / "predictions.jsonl").is_file():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise ValueError(f"data.source {source!r} is not a file (a predictions.jsonl, an eval directory, or a .parquet)")
    if path.suffix == ".jsonl":
        rows, skipped = _from_predictions(path, protocol, only_correct)
    elif path.suffix == ".parquet":
        rows, skipped = _from_parquet(path, protocol)
    else:
        raise ValueError(f"data.source {source!r}: expected a predictions.jsonl (from mapo eval) or an SFT .parquet")
    if skipped:
        reasons: dict[str, int] = {}
        for reason in skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        common = ", ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        print(f"mapo sft: {path}: skipped {len(skipped)} of {len(skipped) + len(rows)} rows ({common})", file=sys.stderr)
    if not rows:
        raise ValueError(f"data.source {path} holds no usable conversation"
                         + (" (only_correct: no row was scored correct)" if only_correct and skipped else ""))
    return rows


def _from_predictions(path: Path, protocol: Any, only_correct: bool) -> tuple[list[Conversation], list[str]]:
    from mapo.agent.episode import readable
    from mapo.agent.protocol import initial_messages, observation_message
    from mapo.metrics.records import read_jsonl

    root = path.parent
    rows, skipped = [], []
    for rec in read_jsonl(path).records:
        if only_correct and not rec.correct:
            skipped.append("not correct")
            continue
        if not rec.image or not (root / rec.image).is_file():
            skipped.append("no image file")
            continue
        view = _open(root / rec.image)
        view_wh = tuple(int(v) for v in rec.view_size) if all(rec.view_size) else view.size
        view = view if view.size == view_wh else view.resize(view_wh, Image.Resampling.BICUBIC)
        messages, images = initial_messages(rec.question, rec.options, protocol), [view]
        problem = None
        for j, turn in enumerate(rec.turns):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
            if not turn.tool_call or j == len(rec.turns) - 1:  # the episode ended at this turn: no observation
                continue
            if turn.crop:
                if not (root / turn.crop).is_file():
                    problem = "crop file missing"
                    break
                messages.append(observation_message(protocol))
                images.append(_open(root / turn.crop))
            else:  # the call was refused: the agent saw the error text
                messages.append(observation_message(protocol, error=readable(turn.error or "the tool call failed")))
        if problem is not None:
            skipped.append(problem)
        elif not rec.turns:
            skipped.append("no assistant turn")
        else:
            rows.append(Conversation(messages, images, rec.id))
    return rows, skipped


def _from_parquet(path: Path, protocol: Any) -> tuple[list[Conversation], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-parquet file
        raise ValueError(f"{path} is not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in ("messages", "images") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: an SFT parquet needs the columns messages and images; missing {', '.join(missing)} "
                         f"(it has {', '.join(table.column_names)})")
    rows, skipped = [], []
    for i, row in enumerate(table.select(["messages", "images"]).to_pylist()):
        try:
            rows.append(_parquet_row(row, path, protocol, i))
        except ValueError as e:
            skipped.append(str(e))
    return rows, skipped


def _parquet_row(row: dict, path: Path, protocol: Any, index: int) -> Conversation:
    messages_in, images_in = row.get("messages") or [], row.get("images") or []
    messages = []
    for m in messages_in:
        role, content = (m or {}).get("role"), (m or {}).get("content")
        if role not in ("system", "user", "assistant", "tool") or not isinstance(content, str):
            raise ValueError("a message without a known role and string content")
        role = protocol.observation_role if role == "tool" else role
        parts: list[dict] = []
        for k, piece in enumerate(content.split(IMAGE_MARK)):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    marks = sum(p["type"] == "image" for m in messages for p in m["content"])
    if marks != len(images_in):
        raise ValueError("<image> marks and images differ in number")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message")
    images = []
    for image in images_in:
        data = (image or {}).get("bytes")
        if data is None and (image or {}).get("path"):
            file = path.parent / image["path"]
            data = file.read_bytes() if file.is_file() else None
        if data is None:
            raise ValueError("an image with neither bytes nor a readable path")
        try:
            images.append(_open(io.BytesIO(data)))
        except OSError:
            raise ValueError("an image that does not decode") from None
    return Conversation(messages, images, f"{path.name}[{index}]")


def _open(source) -> Image.Image:
    with Image.open(source) as image:
        return image.convert("RGB")


def split(conversations: list[Conversation], n_heldout: int) -> tuple[list[Conversation], list[Conversation]]:
    """``(training, held out)``: the last ``min(n_heldout, len // 4)`` conversations are held out."""
    n = min(n_heldout, len(conversations) // 4)
    return (conversations[: len(conversations) - n], conversations[len(conversations) - n:]) if n else (conversations, [])


def example_index(cursor: int, n: int, seed: int) -> int:
    """Conversation of training example ``cursor``: a seeded permutation of the ``n`` per epoch."""
    epoch, pos = divmod(cursor, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def transcripts(conversations: list[Conversation], processor) -> list:
    """:class:`mapo.train.sft_data.Transcript` s of ``conversations`` (chat text + images; no synthetic sample)."""
    from mapo.train.sft_data import Transcript

    return [Transcript(processor.apply_chat_template(c.messages, tokenize=False, add_generation_prompt=False),
                       list(c.images), None) for c in conversations]


__all__ = ["Conversation", "example_index", "load_conversations", "split", "transcripts"]
