"""Tiny saved models the training tests share, and the scripted turns their tokenizer is built for.

Plain functions (not fixtures) so that a spawned rank or a SIGKILLed child process can import them;
``conftest.py`` wraps them in session fixtures (``tiny_policy_dir``, ``tiny_verifier_dir``).
"""

from __future__ import annotations

from pathlib import Path

from mapo.agent import protocol
from mapo.data import synth
from mapo.data.task import tool_config_for

LEVEL = synth.level_config("easy")
TOOL = tool_config_for(LEVEL)
DESCRIPTION = "a red square with the letter A"
FORCED_ZOOM = protocol.render_assistant_turn(think="look", bbox=(0, 0, 56, 56), label="red square")
FORCED_ANSWER = protocol.render_assistant_turn(description=DESCRIPTION, answer="A")


def make_policy_dir(path: Path) -> Path:
    """A 1-layer `tiny` policy (seed 0) whose 512-token vocabulary is fit to the easy level's prompts and the
    forced turns, saved to ``path`` (building it takes under a second)."""
    from mapo.policy import build_tiny_policy

    samples = synth.generate(4, seed=0, config=LEVEL)
    corpus = [protocol.system_prompt()] + [protocol.user_prompt(s.question, s.options) for s in samples]
    corpus += [FORCED_ZOOM, FORCED_ANSWER]
    policy = build_tiny_policy(
        "tiny", corpus=corpus, vocab_size=512, tool_config=TOOL, seed=0, text_layers=1, vision_depth=1
    )
    policy.save(path)
    return path


def save_tiny_clip(path: Path, captions: list[str], **config) -> Path:
    """A randomly initialised tiny CLIP (``VerifierTrainConfig(**config)``) with a tokenizer over ``captions``,
    saved like a real one: its scores are meaningless but computed by the real code path."""
    from mapo.verifier.train import VerifierTrainConfig
    from mapo.verifier.tiny_clip import build_image_processor, build_tiny_clip, build_tokenizer

    vc = VerifierTrainConfig(**config)
    tokenizer = build_tokenizer(captions, vc.max_text_tokens)
    build_tiny_clip(vc, vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    build_image_processor(vc.image_size).save_pretrained(path)
    return path


def make_verifier_dir(path: Path) -> Path:
    """The tiny CLIP the training tests score descriptions with (captions of the easy level + DESCRIPTION)."""
    texts = [b.caption for s in synth.generate(4, seed=0, config=LEVEL) for b in s.boxes] + [DESCRIPTION]
    return save_tiny_clip(
        path, texts, image_size=28, patch_size=14, vision_width=32, vision_layers=1, text_width=32, text_layers=1,
        heads=2, projection_dim=16, max_text_tokens=16,
    )


def half_red_half_blue():
    """A 448x448 original, left half red, right half blue; a 224x224 view of it has scale 2."""
    from PIL import Image

    img = Image.new("RGB", (448, 448), (255, 0, 0))
    img.paste((0, 0, 255), (224, 0, 448, 448))
    return img
