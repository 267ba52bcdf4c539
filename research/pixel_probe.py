"""How much of the answer is in the global view's pixels, and how much in the crop's?

A synthetic level is built so that its questions need zooming: the letter spans under
3 pixels of the model's global view. That is a statement about what a person can see, not
about information: a downsampled letter still leaves a few pixels whose values depend on
it. This probe measures the information directly, with no model in the loop: a ridge
classifier (closed form) on raw pixel values predicts the answer of held-out samples from

- ``view``: the 28 x 28 view pixels centred on the target (the view the policy is shown,
  resized from the canvas like :func:`mapo.agent.tools.zoom_in` resizes it), and
- ``crop``: the oracle's crop of the target, downsampled to 112 x 112.

Chance is the share of the most common answer (about 1/21 for a letter, 1/4 for a letter's
colour). A high ``view`` accuracy means a policy *could* answer
without zooming; whether a trained policy does is the no-tool accuracy of
``warmstart_sweep goals``. Command::

    python research/pixel_probe.py --level easy [--synth '{"glyphs": "LSTX"}'] [--n 600]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image

RIDGE = (1.0, 100.0, 1000.0)  # regularisation strengths tried; the best held-out accuracy is reported


def pixel_features(sample) -> tuple[np.ndarray, np.ndarray]:
    """(view pixels around the target, crop pixels) of one synthetic sample, each flat in [0, 1]."""
    from mapo.agent import tools
    from mapo.data.oracle import oracle_trajectory
    from mapo.data.task import tool_config_for

    demo = oracle_trajectory(sample, rng_or_seed=0)
    image = demo.images[0]
    view_wh = tools.view_size(image.size, tool_config_for(sample))
    view = image.resize(view_wh, Image.BICUBIC)
    x1, y1, x2, y2 = tools.original_to_view(sample.target_boxes[0].xyxy, view_wh, image.size)
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    around = view.crop((cx - 14, cy - 14, cx + 14, cy + 14))  # (28, 28): outside pixels come back black
    crop = demo.images[1].resize((112, 112), Image.BICUBIC)  # the pattern levels' crops are 112 px: no resampling
    return np.asarray(around, np.float32).reshape(-1) / 255.0, np.asarray(crop, np.float32).reshape(-1) / 255.0


def ridge_accuracy(x: np.ndarray, y: np.ndarray, n_train: int, n_classes: int, lam: float) -> float:
    """Held-out accuracy of a one-vs-rest ridge classifier trained on the first ``n_train`` rows.

    x: (N, D) features, y: (N,) class indices.
    """
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    z = (x - mean) / std
    train, targets = z[:n_train], np.eye(n_classes)[y[:n_train]]
    if train.shape[1] > train.shape[0]:  # fewer samples than pixels: the dual form solves an N x N system
        weights = train.T @ np.linalg.solve(train @ train.T + lam * np.eye(len(train)), targets)  # (D, C)
    else:
        weights = np.linalg.solve(train.T @ train + lam * np.eye(z.shape[1]), train.T @ targets)  # (D, C)
    return float((np.argmax(z[n_train:] @ weights, 1) == y[n_train:]).mean())


def pixel_probe(level: str, n: int = 600, synth: dict | None = None, seed: int = 4242) -> dict[str, float]:
    """Best held-out ridge accuracy (over :data:`RIDGE`) from view and from crop pixels; 75% train / 25% test."""
    from mapo.data import synth as synth_module

    if n < 40:
        raise ValueError(f"n must be at least 40 (a quarter is held out), got {n}")
    config = synth_module.level_config(level, **(synth or {}))
    samples = [s for s in synth_module.generate(n, seed, config) if s.task.family != "relative"]
    answers = sorted({s.answer_text for s in samples})
    y = np.array([answers.index(s.answer_text) for s in samples])
    views, crops = zip(*(pixel_features(s) for s in samples))
    n_train = int(0.75 * len(samples))
    # Chance for the probe is over the answers it tells apart (21 letters on a letter level), not the 4 options.
    out = {"level": level, "n": len(samples), "classes": len(answers), "chance": float(np.bincount(y).max() / len(y))}
    for name, x in (("view", np.stack(views)), ("crop", np.stack(crops))):
        out[f"{name}_accuracy"] = max(ridge_accuracy(x, y, n_train, len(answers), lam) for lam in RIDGE)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python research/pixel_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", default="easy")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--synth", default="{}", help="SynthConfig overrides as JSON, e.g. '{\"glyphs\": \"LSTX\"}'")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(pixel_probe(args.level, args.n, json.loads(args.synth)), indent=2))
    except (ValueError, json.JSONDecodeError) as e:
        print(f"pixel_probe: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
