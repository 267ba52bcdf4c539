"""Score any verifier on the held-out label pairs of a verifier training config (``evaluate_labels``).

``mapo verifier train`` with ``label_texts: true`` writes this metric to ``metrics.json["val_labels"]``;
this script computes it for a verifier trained without labels (e.g. the caption-only recipe), on the
same held-out images: the config's samples, crops and split, with label pairs at the config's
``label_frac``. Command::

    python research/verifier_label_metric.py --verifier mapo/assets/verifier [--config configs/verifier_search.yaml]

Prints ``label_auroc`` (a label vs a crop of its object, above the same label vs the image's other crops),
``label_win``, the mean scores and the counts, as JSON.
"""

from __future__ import annotations

import argparse
import json

from mapo.core.config import load_config
from mapo.verifier.clip import load_verifier
from mapo.verifier.inspect import evaluate_labels
from mapo.verifier.train import VerifierTrainConfig, load_training_samples, split_by_group
from mapo.verifier.pairs import synth_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", required=True, help="CLIP directory to score")
    parser.add_argument("--config", default="configs/verifier_search.yaml", help="verifier training config (its data and split)")
    args = parser.parse_args()
    config = load_config(VerifierTrainConfig, args.config, [])
    samples, tool_config = load_training_samples(config)
    pairs = synth_pairs(samples, config.crops_per_sample, tool_config, config.seed, label_frac=config.label_frac)
    _, val = split_by_group(pairs, config.val_fraction, config.seed)
    out = evaluate_labels(load_verifier(args.verifier), val)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
