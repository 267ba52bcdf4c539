"""A small Qwen2-style BPE tokenizer trained offline, and the Qwen2-VL chat template.

The tokenizer is a genuine ``transformers.Qwen2Tokenizer``: byte-level BPE with
Qwen2's exact normaliser (NFC), pre-tokeniser regex and decoder, so that a
checkpoint saved here loads with ``AutoTokenizer`` like any Qwen checkpoint.
Only the vocabulary is ours: trained on the task's own text, a few thousand
entries instead of Qwen's 151k.

Where we depart from Qwen:

- **Coordinates are single tokens.** Qwen's pre-tokeniser splits every digit
  (``512`` is three tokens). Mapping image positions to coordinate tokens is what
  a tiny model learns slowest (docs/policy.md, docs/warmstart.md), so by default every
  integer ``0..max_number`` is an added (non-special) token: ``[12, 640]`` costs
  one token per coordinate. Larger numbers still tokenise (``1234`` ->
  ``123`` ``4``) and decode exactly. ``max_number=None`` restores Qwen's
  digit-by-digit behaviour. This is a guess at what helps, not a measured win.
- **Protocol tags are single tokens** (``<think>``, ``</answer>``, …) as Qwen2.5
  does for ``<tool_call>``; they are added non-special tokens, so
  ``skip_special_tokens`` keeps them in decoded text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

# Qwen2-VL's special tokens, in Qwen's id order (ids here start after the BPE vocab).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Tokens a policy must never generate: they only mark where image features go.
VISION_TOKENS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5 adds these as plain (non-special) tokens.
QWEN_TEXT_TAGS: tuple[str, ...] = ("<tool_call>", "</tool_call>")

# Qwen2's pre-tokeniser regex (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The Qwen2-VL chat template (as shipped with Qwen2-VL / Qwen2.5-VL-Instruct), unchanged
# except that a "tool" role is rendered like any other role name.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen2_pipeline(tok: Tokenizer) -> Tokenizer:
    """Give ``tok`` Qwen2's normaliser, pre-tokeniser and decoder (must match Qwen2Tokenizer.__init__)."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(corpus: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train byte-level BPE on ``corpus`` with Qwen2's pre-tokeniser; return (vocab, merges).

    The vocabulary always contains the 256 byte symbols, so any text tokenises.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + merges), got {vocab_size}")
    tok = _qwen2_pipeline(Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="")))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_tokenizer(
    corpus: Iterable[str],
    *,
    vocab_size: int = 2048,
    max_number: int | None = 1024,
    extra_tokens: Sequence[str] = (),
    base_vocab_size: int | None = None,
):
    """A ``Qwen2Tokenizer`` with a BPE vocabulary trained on ``corpus``.

    Args:
        corpus: training texts (prompts, answers, tag grammar).
        vocab_size: size of the trained BPE part (bytes + merges), before added tokens.
        max_number: every integer ``0..max_number`` becomes one token (coordinates);
            ``None`` keeps Qwen's one-token-per-digit.
        extra_tokens: further added (non-special) tokens, e.g. protocol tags.
        base_vocab_size: pad the BPE vocabulary with unreachable filler entries to exactly
            this size, so that the special tokens get Qwen's real ids (151643 = ``<|endoftext|>``
            onwards); ``None`` keeps the trained size.

    Returns:
        ``transformers.Qwen2Tokenizer`` with Qwen's special tokens, ``<|im_end|>`` as
        EOS, ``<|endoftext|>`` as pad, and the Qwen2-VL chat template.
    """
    from transformers import Qwen2Tokenizer

    if max_number is not None and max_number < 0:
        raise ValueError(f"max_number must be >= 0 or None, got {max_number}")
    vocab, merges = train_bpe(corpus, vocab_size)
    if base_vocab_size is None:
        tokenizer = Qwen2Tokenizer(
            vocab=vocab,
            merges=merges,
            unk_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=None,
        )
    else:
        # Qwen's id order (<|endoftext|>, <|im_start|>, <|im_end|>, ...): add the specials first,
        # then name EOS and pad among them (naming them in the constructor would add EOS first).
        tokenizer = Qwen2Tokenizer(
            vocab=_padded(vocab, base_vocab_size), merges=merges, unk_token=None, eos_token=None, pad_token=None,
            extra_special_tokens=None,
        )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    plain = list(dict.fromkeys([*QWEN_TEXT_TAGS, *extra_tokens]))
    if max_number is not None:
        plain += [str(i) for i in range(max_number + 1)]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer


def _padded(vocab: dict[str, int], size: int) -> dict[str, int]:
    """``vocab`` plus filler entries ``<|fillN|>`` up to ``size`` ids. No merge produces a
    filler, so tokenisation is unchanged; they only move the added tokens to Qwen's ids."""
    if size < len(vocab):
        raise ValueError(f"base_vocab_size={size} is smaller than the trained vocabulary ({len(vocab)})")
    out = dict(vocab)
    for i in range(len(vocab), size):
        out[f"<|fill{i}|>"] = i
    return out


def protocol_tags() -> list[str]:
    """The protocol's tag strings (``<think>``, ``</answer>``, …), to become single tokens."""
    from mapo.agent.protocol import ProtocolConfig

    cfg = ProtocolConfig()
    names = (cfg.think_tag, cfg.tool_call_tag, cfg.description_tag, cfg.answer_tag, cfg.response_tag)
    return [s for n in names for s in (f"<{n}>", f"</{n}>")]


# Samples per synthetic level in the default corpus: enough to see every question
# template, colour, shape and letter; images are rendered, so keep it small.
_CORPUS_SAMPLES = {"easy": 40, "medium": 40, "hard": 8}


def default_corpus(seed: int = 0) -> list[str]:
    """Texts to train the tokenizer on: the protocol's prompts and tag grammar, the synthetic
    task's questions and options, and oracle transcripts (think, tool calls, descriptions,
    answers, with jittered and wrong first zooms so recovery phrases appear). Deterministic
    given ``seed``."""
    return list(_default_corpus(seed))


@functools.lru_cache(maxsize=4)
def _default_corpus(seed: int) -> tuple[str, ...]:
    # Cached: it renders synthetic images, and tests and recipes build several policies.
    from mapo.agent import protocol
    from mapo.data import synth
    from mapo.data.oracle import oracle_trajectory

    texts = [protocol.system_prompt(), protocol.observation_message(error="the box is empty")["content"][0]["text"]]
    texts += _text_parts(protocol.observation_message())
    for level, n in _CORPUS_SAMPLES.items():
        for i, sample in enumerate(synth.generate(n, seed=seed, config=level)):
            texts.append(protocol.user_prompt(sample.question, sample.options))
            demo = oracle_trajectory(sample, rng_or_seed=seed * 7919 + i, jitter=0.3, wrong_first_zoom=0.3)
            texts.extend(demo.assistant_texts)
    return tuple(texts)


def _text_parts(message: dict) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [c["text"] for c in content if c.get("type") == "text"]
