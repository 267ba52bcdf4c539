"""SFT data: oracle transcripts of the synthetic task, their batches and label masks.

Training example ``i`` is synthetic sample :func:`sample_index` ``(i)`` of ``data.seed``
turned into an oracle transcript (:func:`make_transcript`, seeded by ``(seed, index)``): the
stream is a pure function of the cursor, so resume needs only the cursor.

Tokens. The whole conversation (system, user + global view, every assistant turn, every
observation + crop) is rendered with the chat template and tokenised by the processor in one
pass (:func:`collate`). Labels are the assistant turns only (:func:`assistant_mask`): from after
the assistant header up to and including the end-of-turn id, both read off the chat template
(:func:`assistant_markers`); the prompt, observations (with their image tokens) and padding are
``IGNORE``. :func:`answer_word_mask` marks the tokens that spell the answer word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapo.agent import tools
from mapo.core.config import knob
from mapo.data.synth import SynthOverrides
from mapo.agent.protocol import ProtocolConfig

IGNORE = -100  # label of tokens outside the loss (torch's cross-entropy ignore_index)


@dataclass(frozen=True)
class SFTDataConfig:
    """Where the oracle transcripts come from."""

    source: str | None = knob(None, "your own conversations instead of the synthetic oracle: an eval's "
                              "predictions.jsonl (or its directory) or an SFT parquet (messages + images; "
                              "mapo.train.sft_own); null = the synthetic task")
    only_correct: bool = knob(True, "with a predictions.jsonl source, train on the rows the eval scored correct only")
    level: str = knob("easy", "synthetic task level (mapo.data.synth.LEVELS)")
    synth: SynthOverrides = knob(factory=SynthOverrides, help="SynthConfig knobs on top of the level, e.g. {tint_strength: 0.5}")
    seed: int = knob(0, "seed of the training samples")
    n_train: int = knob(0, "distinct training samples (0 = a fresh sample for every example)")
    jitter: float = knob(0.1, "oracle box-corner jitter (fraction of the box side); misses teach re-zooming")
    wrong_first_zoom: float = knob(0.1, "probability the oracle's first zoom lands elsewhere, then recovers")
    search_misses: int = knob(
        0, "a search: the oracle visits up to this many distractors, in a random order, before the target (0 = off)"
    )
    view_scan: bool = knob(
        False, "before the first zoom the thought names what every grid cell holds, then where the asked object is"
    )
    search_words_weighted: bool = knob(
        False,
        "every colour and shape word and the words 'not' and 'empty' weigh word_loss_weight too (a search stage: "
        "reading which object a crop holds and deciding whether it is the asked one are the steps that find it)",
    )
    max_length: int = knob(2048, "examples longer than this many tokens are refused (error, not truncation)")
    localize_only: bool = knob(False, "end each transcript after its first tool call (a localisation-only stage)")
    glyph_hint: float = knob(
        0.0, "fraction of glyph questions whose prompt also states the glyph (a copying stage: docs/warmstart.md)"
    )
    option_scan: bool = knob(
        False, "the final thought goes through the options up to the correct one ('(A) bands: no. (B) checks: yes.')"
    )
    scan_words_weighted: bool = knob(
        False, "with option_scan, every scanned option's text and its yes/no verdict weigh word_loss_weight too"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.glyph_hint <= 1:
            raise ValueError(f"glyph_hint must be in [0, 1], got {self.glyph_hint}")
        if self.n_train < 0:
            raise ValueError(f"n_train must be >= 0 (0 = unlimited fresh samples), got {self.n_train}")
        if not (0 <= self.jitter <= 1 and 0 <= self.wrong_first_zoom <= 1):
            raise ValueError("jitter and wrong_first_zoom must be in [0, 1]")
        if self.search_misses < 0:
            raise ValueError(f"search_misses must be >= 0, got {self.search_misses}")
        if self.scan_words_weighted and not self.option_scan:
            raise ValueError("scan_words_weighted needs option_scan: true (there is no scan to weigh otherwise)")


def synth_config(cfg: SFTDataConfig):
    """The SynthConfig of the training level with ``cfg.synth``'s knobs on top."""
    from mapo.data import synth

    return synth.level_config(cfg.level, **cfg.synth.set_keys())


@dataclass
class Transcript:
    """One oracle conversation ready for the processor: chat text and images in sequence order."""

    text: str
    images: list[Image.Image]  # global view (resized to the view), then each crop
    sample: Any  # mapo.data.Sample


def make_transcript(sample, processor, *, seed: int, data: SFTDataConfig, protocol: ProtocolConfig) -> Transcript:
    """The oracle transcript of ``sample`` as chat text plus the images the model sees."""
    from mapo.data.oracle import oracle_trajectory
    from mapo.data.task import tool_config_for

    from mapo.policy.processor import processor_factor

    # The oracle writes boxes in the view the policy will see: smart-resized with its own factor.
    tool_config = tools.with_factor(tool_config_for(sample), processor_factor(processor))
    demo = oracle_trajectory(
        sample, rng_or_seed=seed, jitter=data.jitter, wrong_first_zoom=data.wrong_first_zoom,
        tool_config=tool_config, protocol_config=protocol, option_scan=data.option_scan,
        search_misses=data.search_misses, view_scan=data.view_scan,
    )
    messages, crops = demo.messages, demo.images[1:]
    if data.glyph_hint and np.random.default_rng([seed, 7]).random() < data.glyph_hint:
        messages = with_glyph_hint(messages, sample)
    if data.localize_only:
        # Keep system, user and the first assistant turn (think + box + label), so steps are
        # short and the loss is the first zoom alone; the crop it would return is never shown.
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages, crops = messages[: first + 1], []
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return Transcript(text, [global_view(demo.images[0], tool_config), *crops], sample)


def with_glyph_hint(messages: list[dict], sample) -> list[dict]:
    """``messages`` whose first user turn ends with "Hint: the letter is K." (glyph questions only).

    The oracle's answer then only needs copying from the prompt (description, thought) and a
    lookup among the options (answer letter): a stage that teaches those two operations
    without reading the crop.
    """
    if sample.task is None or sample.task.family != "glyph" or not sample.answer:
        return messages
    glyph = sample.options[ord(sample.answer) - ord("A")]
    out = [dict(m) for m in messages]
    user = next(m for m in out if m["role"] == "user")
    user["content"] = [
        {**part, "text": f"{part['text']}\nHint: the letter is {glyph}."} if part.get("type") == "text" else part
        for part in user["content"]
    ]
    return out


def global_view(image: Image.Image, tool_config: tools.ToolConfig) -> Image.Image:
    """The global image as the model sees it (same resize as ``mapo.engine.rollout``)."""
    view_wh = tools.view_size(image.size, tool_config)
    return image if image.size == view_wh else image.resize(view_wh, Image.Resampling.BICUBIC)


def sample_index(cursor: int, data: SFTDataConfig) -> int:
    """Synthetic sample index of training example ``cursor`` (a pure function: resume needs only the cursor)."""
    if data.n_train == 0:
        return cursor
    epoch, pos = divmod(cursor, data.n_train)
    return int(np.random.default_rng([data.seed, epoch]).permutation(data.n_train)[pos])


def training_transcripts(start: int, count: int, processor, cfg: Any) -> list[Transcript]:
    """Oracle transcripts of training examples ``start .. start + count - 1`` (``cfg``: an SFTConfig)."""
    from mapo.data import synth

    sc = synth_config(cfg.data)
    out = []
    for cursor in range(start, start + count):
        index = sample_index(cursor, cfg.data)
        sample = synth.generate_one(sc, cfg.data.seed, index)
        out.append(make_transcript(sample, processor, seed=cfg.data.seed * 1_000_003 + index, data=cfg.data, protocol=cfg.protocol))
    return out


def heldout_samples(cfg: Any, n: int) -> list:
    """``n`` held-out synthetic samples of ``cfg.eval.seed`` (``cfg``: an SFTConfig) on the training level."""
    from mapo.data import synth

    return synth.generate(n, seed=cfg.eval.seed, config=synth_config(cfg.data))



def assistant_mask(input_ids: torch.Tensor, header: list[int], end_id: int) -> torch.Tensor:
    """True on the tokens of assistant turns: after each ``header`` run up to and including ``end_id``.

    Args:
        input_ids: (B, T) token ids.
        header: ids of ``<|im_start|>assistant\\n``.
        end_id: id of ``<|im_end|>``.

    Returns:
        (B, T) bool.
    """
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    n = len(header)
    for b, row in enumerate(input_ids.tolist()):
        t = 0
        while t <= len(row) - n:
            if row[t : t + n] != header:
                t += 1
                continue
            t += n
            while t < len(row):
                mask[b, t] = True
                if row[t] == end_id:
                    break
                t += 1
    return mask


def assistant_markers(tokenizer) -> tuple[list[int], int]:
    """(ids that open an assistant turn, id that closes it), read off the chat template.

    The header is what ``add_generation_prompt`` appends (Qwen: ``<|im_start|>assistant\\n``);
    the closing id is the first id the template puts after an assistant message's content
    (Qwen: ``<|im_end|>``). Reading them from the template rather than spelling them keeps
    the labels right for any Qwen-VL generation's template.
    """
    system = [{"role": "system", "content": "s"}]
    before = tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=False)
    after = tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    if not after.startswith(before) or after == before:
        raise ValueError("the chat template does not render an assistant header with add_generation_prompt")
    header = tokenizer(after[len(before):], add_special_tokens=False)["input_ids"]
    sentinel = "\u2063MAPO\u2063"
    text = tokenizer.apply_chat_template(system + [{"role": "assistant", "content": sentinel}], tokenize=False)
    close = tokenizer(text[text.index(sentinel) + len(sentinel):], add_special_tokens=False)["input_ids"]
    if not close:
        raise ValueError("the chat template puts nothing after an assistant message; cannot find the end of a turn")
    return list(header), int(close[0])


def collate(transcripts: list[Transcript], policy, max_length: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Processor inputs for a batch and its labels.

    Returns:
        inputs: ``input_ids``/``attention_mask``/``mm_token_type_ids`` (B, T), ``pixel_values``
            (patches, D) and ``image_grid_thw`` (images, 3), images in sequence order across the batch.
        labels: (B, T) long, the token id on assistant tokens, -100 elsewhere.
    """
    inputs = policy.processor(
        text=[t.text for t in transcripts],
        images=[im for t in transcripts for im in t.images],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )
    lengths = inputs["attention_mask"].sum(-1)
    if int(lengths.max()) > max_length:
        raise ValueError(f"a transcript has {int(lengths.max())} tokens > data.max_length={max_length}; raise it")
    header, end_id = assistant_markers(policy.tokenizer)
    mask = assistant_mask(inputs["input_ids"], header, end_id)
    mask &= inputs["attention_mask"].bool()
    labels = torch.where(mask, inputs["input_ids"], torch.full_like(inputs["input_ids"], IGNORE))  # (B, T)
    return dict(inputs), labels


def answer_word_mask(
    transcripts: list[Transcript], labels: torch.Tensor, tokenizer, *, option_scan: bool = False,
    search_words: bool = False,
) -> torch.Tensor:
    """(B, T) bool: the labelled tokens that spell each transcript's answer word (" cyan", " checks").

    Every labelled occurrence counts: on ink and pattern levels that is the description (read off
    the crop) and the final thought (its copy). Matched as whole token runs, so a word's tokens
    elsewhere ("a" in "a red square") are not marked. With ``option_scan`` (transcripts whose
    final thought goes through the options, ``(A) bands: no. (B) checks: yes.``) every option's
    text and the " yes" / " no" verdicts are marked too: copying each option and deciding whether
    it is the answer are the steps that find the letter. With ``search_words`` every colour and shape
    word, " not" and " empty" are marked as well (the words that say what a cell or crop holds and whether it
    is the asked one).
    """
    from mapo.data.synth_render import COLORS, SHAPES

    mask = torch.zeros_like(labels, dtype=torch.bool)
    for b, transcript in enumerate(transcripts):
        answer = getattr(transcript.sample, "answer_text", None)
        if not answer:
            continue
        words = [answer]
        if option_scan:
            words += [o for o in transcript.sample.options if o != answer] + ["yes", "no"]
        if search_words:
            words += [*COLORS, *SHAPES, "not", "empty"]
        for text in words:
            word = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            for k in token_runs(labels[b].tolist(), word):
                mask[b, k : k + len(word)] = True
    return mask


def token_runs(row: list[int], word: list[int]) -> list[int]:
    """Start indices of every occurrence of the token run ``word`` in ``row``."""
    n = len(word)
    return [k for k in range(len(row) - n + 1) if row[k : k + n] == word]
