"""Training recipes (SFT warm start, RL) and the run machinery they share.

Each piece has one home: the optimiser and schedule (:mod:`mapo.train.optim`), metrics
logging (:mod:`mapo.train.metrics_log`), RNG capture and atomic checkpoints
(:mod:`mapo.train.checkpoint`), the run-directory guard and lock (:mod:`mapo.core.run_dir`).
Nothing there knows about the model or the algorithm: the SFT and RL recipes pass in a
function that saves the model, a dict of trainer state, and so on.

Run directory layout::

    RUN_DIR/config.yaml          the full config of the run (what --resume reads)
    RUN_DIR/run.json             {"kind": "sft", "fingerprint": ...}: what the guard compares
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tb/                  TensorBoard event files (same scalars)
    RUN_DIR/checkpoints/step_000100/   model/ (caller's format) + trainer.pt + state.json + checkpoint.json
    RUN_DIR/checkpoints/latest   name of the newest complete checkpoint
    RUN_DIR/.lock                held by the process training in RUN_DIR (pid inside)

Nothing in a run directory can run code when it is resumed: ``trainer.pt`` holds
only tensors and plain containers and is read with ``torch.load(weights_only=True)``
(a file holding any other pickled object is refused), ``state.json`` and
``checkpoint.json`` are JSON. ``checkpoint.json`` records the size and sha256 of
every other file of its checkpoint; resume verifies them and falls back to the
newest checkpoint that verifies, with a warning naming what is damaged.
"""
