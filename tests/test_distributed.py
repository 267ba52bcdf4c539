"""Data-parallel ``mapo train``: 2 gloo ranks against one process, rank-0-only writes, resume, bad launches.

One pair of spawned ranks (the expensive part: each imports torch and transformers)
plays every multi-rank scenario in turn, while the test process runs the
single-process references; the tests then compare what both wrote:

- a toy step of each ``agg_loss`` mode through torch's DDP (:func:`wrap_for_training`, :func:`micro_steps`),
  a rank with fewer micro-batches (or none) padding with zero-loss ones;
- ``mapo train`` for 1 step with 2 ranks vs 1 process (same updated weights);
- ``mapo train`` for 2 steps with 2 ranks, interrupted after step 1's checkpoint,
  resumed with 2 ranks, and (on a copy) with 1 rank, vs 2 uninterrupted steps in
  one process.

The policy, verifier and scripted turns are tests/test_train.py's.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mapo.algo.advantage import AdvantageConfig, get_estimator
from mapo.algo.loss import agg_loss
from mapo.train import distributed as D

TESTS = Path(__file__).parent
WORLD = 2
P, G, T, V, H = 4, 3, 7, 11, 5  # toy: prompts, group size, tokens, vocab, features
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
# Weights after a step agree to float32 roundoff: the ranks batch the rollout and the
# training forward differently (fewer rows, other padding), which reorders sums.
# optim.eps = 1 makes AdamW's first step about lr * g, so the weights measure the
# gradient: with eps = 1e-8 each element is divided by its own |g|, and elements whose
# gradient nearly cancels (advantages sum to zero within a group) turn that roundoff
# into a visible fraction of lr.
ATOL = 1e-6


# ----------------------------------------------------------------------------- toy step


def _data():
    """A step's batch for P prompts x G samples: features, tokens, loss mask, segments, rewards, scores."""
    g = torch.Generator().manual_seed(0)
    B = P * G
    x = torch.randn(B, T, H, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)  # different token counts per trajectory
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    segments = torch.where(mask, (torch.arange(T)[None, :] >= 3).long().expand(B, T), torch.full((B, T), -1))
    outcome = torch.randint(0, 3, (B,), generator=g).float()
    semantic = torch.rand(B, 2, generator=g)
    group = torch.arange(B) // G
    return x, tokens, mask, segments, outcome, semantic, group


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.used = torch.nn.Linear(H, V)
        self.unused = torch.nn.Linear(1, 1)  # never in the loss: its grad must stay None, as in one process


def _loss(model, rows, mode, denominator, micro=None):
    """The loss of ``rows`` (whole groups); with ``micro`` (a subset of rows) only that subset's share of it."""
    x, tokens, mask, segments, outcome, semantic, group = (t[rows] for t in _data())
    adv = get_estimator("mapo")(outcome, group, segments, semantic, config=AdvantageConfig())  # (b, T)
    if micro is not None:  # as mapo train: advantages of the whole groups, the loss of a micro-batch
        keep = [rows.index(r) for r in micro]
        x, tokens, mask, adv = x[keep], tokens[keep], mask[keep], adv[keep]
    logp = torch.log_softmax(model.used(x), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (b, T)
    return agg_loss(-adv * logp, mask, mode, denominator=denominator)


class _ToyForward(torch.nn.Module):
    """What DDP wraps: the toy loss of some rows (the policy's LogprobForward in mapo train)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, rows, micro, mode, denominator):
        return _loss(self.model, rows, mode, denominator, micro=micro)


def _ddp_step(info, rows, mode, micro_size):
    """One accumulated step through DDP: this rank's ``rows`` in micro-batches of ``micro_size``."""
    model = _Toy()
    trainer = D.wrap_for_training(_ToyForward(model), info)
    denominator = D.global_denominator(_local_count(rows, mode), info)
    micros = [rows[i : i + micro_size] for i in range(0, len(rows), micro_size)]
    for micro, real in D.micro_steps(trainer, micros, [0, 1, 2], info):
        loss = trainer([0, 1, 2] if not real else rows, micro, mode, denominator)
        (loss if real else loss * 0.0).backward()
    return model


def _local_count(rows, mode):
    mask = _data()[2][rows]
    return float(mask.sum()) if mode == "token-mean" else float((mask.sum(-1) > 0).sum())


def _updated(model):
    return torch.cat([(p.detach() - 0.5 * p.grad).flatten() for p in model.used.parameters()])


def _single_process(mode, rows=None):
    model = _Toy()
    _loss(model, list(range(P * G)) if rows is None else rows, mode, None).backward()
    return _updated(model)


def _toy_scenarios(info, out):
    first, count = D.rank_span(P, info)  # this rank's prompts; all G samples of each stay here
    rows = [p * G + k for p in range(first, first + count) for k in range(G)]
    for mode in MODES:
        # Rank 0 holds 2 micro-batches, rank 1 3 (micro-batches of 4, 2 rows): counts differ between ranks.
        model = _ddp_step(info, rows, mode, micro_size=4 if info.is_main else 2)
        if info.is_main:
            out[mode] = _updated(model)
            out["unused_grad_is_none"] = model.unused.weight.grad is None
    # A mini-batch with no rows on rank 1: it pads, contributes zeros, rank 0's rows make the gradient.
    model = _ddp_step(info, [0, 1, 2] if info.is_main else [], "token-mean", micro_size=2)
    out[f"empty_rank_{info.rank}"] = _updated(model)
    out[f"metrics{info.rank}"] = D.mean_metrics(
        {"reward": float(info.rank), "pairs": 3.0} | ({"only_on_1": 5.0} if info.rank else {}), weight=1.0 + info.rank,
        info=info, summed=("pairs",),
    )


# ----------------------------------------------------------------------------- mapo train scenarios


def _configs(assets):
    sys.path.insert(0, str(TESTS))
    import test_train as t

    optim = dict(lr=0.05, eps=1.0)  # eps = 1: see ATOL
    # save_rollouts_groups=1: the step's first group, which rank 0 plays, so both runs save the same rollouts.
    one = t.rl_config(assets, steps=1, optim=optim, data=dict(n_eval=1), tensorboard=True, save_rollouts_groups=1)
    two = t.rl_config(assets, steps=2, optim=optim, save_every=1, minibatches=2, micro_batch_size=1, bootstrap_every=0,
                      data=dict(n_eval=0))
    return one, two, t.forced


class _Stop(Exception):
    """Raised in place of step 2 to interrupt a run after step 1's checkpoint."""


def _interrupt_before_step(index):
    import mapo.train.rl as rl

    real = rl.rl_step

    def step(run, forced_turns=None):
        if run.step == index:
            raise _Stop
        return real(run, forced_turns)

    rl.rl_step = step
    return lambda: setattr(rl, "rl_step", real)


def _record_writes(root: Path, log: list):
    """Audit hook: every Python-level open-for-writing, mkdir, rename or delete under ``root``."""
    root = str(root)
    events = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "shutil.copyfile"}

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            path, mode = os.fspath(args[0]), args[1]
            if isinstance(mode, str) and any(c in mode for c in "wax+") and path.startswith(root):
                log.append(f"open {path}")
        elif event in events and args and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).startswith(root):
            log.append(f"{event} {os.fspath(args[0])}")

    sys.addaudithook(hook)


def _worker(rank, port, root, assets, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    info = D.init_distributed("cpu", D.dist_info_from_env())
    root = Path(root)
    try:
        _toy_scenarios(info, out)
        from mapo.train.rl import train

        one, two, forced = _configs(assets)
        writes: list[str] = []
        _record_writes(root / "dp_one", writes)  # only the 1-step run: resume below copies on purpose
        summary = train(one, root / "dp_one", progress=False, forced_turns=forced)
        out[f"writes{rank}"] = list(writes)
        out[f"summary{rank}"] = summary["train"]

        restore = _interrupt_before_step(1)
        try:
            train(two, root / "dp_two", progress=False, forced_turns=forced)
        except _Stop:
            out[f"stopped{rank}"] = True
        restore()
        D.barrier(info)
        if info.is_main:
            shutil.copytree(root / "dp_two", root / "dp_two_copy")  # resumed below with 1 rank, in the test process
        D.barrier(info)
        train(two, root / "dp_two", resume=True, progress=False, forced_turns=forced)
    finally:
        D.cleanup(info)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_policy_dir, tiny_verifier_dir):
    """Both sides' runs: the 2-rank job (spawned) and the single-process references (meanwhile, here)."""
    from mapo.train.rl import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dp")
    # The tests compare each update with the starting weights in root / "policy": a private copy of the shared one.
    assets = (shutil.copytree(tiny_policy_dir, root / "policy"), tiny_verifier_dir)
    with mp.Manager() as manager:
        out = manager.dict()
        job = mp.spawn(_worker, args=(_free_port(), str(root), assets, out), nprocs=WORLD, join=False)
        one, two, forced = _configs(assets)
        single = {
            "one": train(one, root / "single_one", progress=False, forced_turns=forced)["train"],
            "two": train(two, root / "single_two", progress=False, forced_turns=forced)["train"],
        }
        _join(job, timeout_s=300)
        out = dict(out)
    return root, out, single, (one, two, forced)


def _join(job, timeout_s: float):
    """Wait for the spawned ranks (a worker's exception is re-raised); kill them after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not job.join(timeout=1):
        if time.monotonic() > deadline:
            for process in job.processes:
                process.kill()
            pytest.fail(f"the 2-rank job did not finish in {timeout_s} s (a rank waiting on a collective?)")


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _assert_same_update(a: Path, b: Path, start: Path):
    wa, wb, w0 = _weights(a), _weights(b), _weights(start)
    moved = max((wb[k] - w0[k]).abs().max().item() for k in wb)
    assert moved > 100 * ATOL, f"the step moved the weights by only {moved:.3g}: the comparison would be empty"
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= ATOL, f"weights differ by up to {worst:.3g}"


# ----------------------------------------------------------------------------- tests


def test_toy_gloo_step_equals_single_process_for_every_agg_mode(runs):
    _, out, _, _ = runs
    for mode in MODES:
        torch.testing.assert_close(out[mode], _single_process(mode), rtol=0, atol=1e-6, msg=mode)
    assert out["unused_grad_is_none"]
    expected = _single_process("token-mean", rows=[0, 1, 2])
    torch.testing.assert_close(out["empty_rank_0"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["empty_rank_1"], expected, rtol=0, atol=1e-6)
    # weighted mean over the ranks that report a key: (0 * 1 + 1 * 2) / 3, and 5 from rank 1 alone; pairs summed
    assert out["metrics0"] == out["metrics1"] == {"reward": pytest.approx(2 / 3), "only_on_1": 5.0, "pairs": 6.0}


def test_two_rank_train_step_gives_the_single_process_weights_and_metrics(runs):
    root, out, single, _ = runs
    _assert_same_update(root / "dp_one" / "final", root / "single_one" / "final", root / "policy")
    dp_metrics = out["summary0"]
    assert out["summary1"]["grad_norm"] == dp_metrics["grad_norm"]  # identical gradients on both ranks
    # Whole-batch quantities, and means over trajectories, are the single-process numbers.
    for key in ("reward_mean", "accuracy", "tool_call_rate", "turns_mean", "verifier_pairs", "loss", "grad_norm",
                "clip_frac", "entropy", "grad_var_bootstrap", "grad_proj", "optimizer_steps"):
        assert dp_metrics[key] == pytest.approx(single["one"][key], rel=1e-4, abs=1e-7), key


def test_only_rank_0_writes(runs):
    root, out, _, _ = runs
    assert out["writes1"] == [], f"rank 1 wrote: {out['writes1'][:5]}"
    assert any("metrics.jsonl" in w for w in out["writes0"]), "the audit hook saw no write of rank 0"
    listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if "tb" not in p.parts)  # noqa: E731
    assert listing(root / "dp_one") == listing(root / "single_one")
    lines = (root / "dp_one" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((root / "single_one" / "metrics.jsonl").read_text().splitlines()) == 2  # train + eval
    assert len(list((root / "dp_one" / "tb").iterdir())) == 1  # one TensorBoard writer


def test_two_rank_run_resumes_with_two_ranks_and_with_one(runs):
    root, out, single, (_, two, forced) = runs
    from mapo.train.metrics_log import read_metrics
    from mapo.train.rl import train

    assert out["stopped0"] and out["stopped1"]
    assert sorted(p.name for p in (root / "dp_two_copy" / "checkpoints").glob("step_*")) == ["step_000001"]
    _assert_same_update(root / "dp_two" / "final", root / "single_two" / "final", root / "policy")
    summary = train(two, root / "dp_two_copy", resume=True, progress=False, forced_turns=forced)
    assert summary["steps"] == 2
    _assert_same_update(root / "dp_two_copy" / "final", root / "single_two" / "final", root / "policy")
    for run in ("dp_two", "dp_two_copy"):
        rows = [r for r in read_metrics(root / run / "metrics.jsonl") if "reward_mean" in r]
        assert [r["step"] for r in rows] == [1, 2], run
        assert rows[-1]["loss"] == pytest.approx(single["two"]["loss"], rel=1e-4, abs=1e-7), run


# ----------------------------------------------------------------------------- bad launches


def test_a_world_size_that_splits_a_group_stops_before_anything_starts(tmp_path, monkeypatch, capsys):
    from mapo.cli import main
    from mapo.core.config import from_dict
    from mapo.train.rl import RLConfig, train

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    cfg = from_dict(RLConfig, dict(policy=str(tmp_path / "policy"), prompts_per_step=2, advantage=dict(estimator="grpo")))
    with pytest.raises(ValueError, match=r"2 prompts per step cannot be split over 3 ranks .*\(e.g. 3 or 6\)"):
        train(cfg, tmp_path / "bad", progress=False)  # fails before the rendezvous (no MASTER_ADDR is set)
    assert not (tmp_path / "bad").exists()
    overrides = [f"policy={tmp_path / 'policy'}", "prompts_per_step=4", "rollout.group_size=2"]
    assert main(["train", "--out", str(tmp_path / "bad_cli"), "--algo", "grpo", "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    assert "4 prompts per step cannot be split over 3 ranks" in err and "multiple of 3 (e.g. 3 or 6)" in err
    assert "--nproc-per-node that divides 4" in err
    assert not (tmp_path / "bad_cli").exists()


def test_batch_split_errors_say_what_to_change():
    assert D.check_batch_split(8, 4, 2) == 4
    with pytest.raises(ValueError, match=r"set prompts_per_step to a multiple of 3 \(e.g. 6 or 9\)"):
        D.check_batch_split(8, 4, 3)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        D.check_batch_split(8, 4, 0)


def test_a_group_split_across_ranks_would_change_the_advantages():
    """Why prompts, not trajectories, are sharded: group statistics need the whole group."""
    x, tokens, mask, segments, outcome, semantic, group = _data()
    cfg = AdvantageConfig()
    whole = get_estimator("mapo")(outcome, group, segments, semantic, config=cfg)
    half = (P * G) // 2  # P*G/2 = 6 splits group 1 (rows 3..5) in the middle when G = 3 does not divide it
    split = torch.cat([
        get_estimator("mapo")(outcome[:half + 1], group[:half + 1], segments[:half + 1], semantic[:half + 1], config=cfg),
        get_estimator("mapo")(outcome[half + 1:], group[half + 1:], segments[half + 1:], semantic[half + 1:], config=cfg),
    ])
    assert not torch.allclose(whole, split)


def test_dist_info_from_env_and_rank_span():
    assert D.dist_info_from_env({}) == D.DistInfo(0, 1, 0)
    info = D.dist_info_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert info.distributed and not info.is_main
    assert D.rank_span(6, info) == (3, 3) and D.rank_span(6, D.DistInfo()) == (0, 6)
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        D.dist_info_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        D.dist_info_from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="cannot be split evenly"):
        D.rank_span(3, D.DistInfo(0, 2, 0))


def test_per_episode_streams_make_an_episode_independent_of_its_batch(tiny_policy_dir):
    """The rollout property data parallelism rests on: an episode samples the same tokens alone or in a batch."""
    sys.path.insert(0, str(TESTS))
    import tiny_assets as t
    from mapo.data import synth
    from mapo.policy import load_policy
    from mapo.engine.rollout import RolloutConfig, rollout

    torch.set_num_threads(1)
    policy = load_policy(tiny_policy_dir)
    samples = synth.generate(2, seed=5, config=t.LEVEL)
    factory = lambda g, m: torch.Generator().manual_seed(1000 * g + m)  # noqa: E731
    played = {}
    for batch_size in (1, 4):
        cfg = RolloutConfig(group_size=2, max_turns=1, max_new_tokens_per_turn=12, batch_size=batch_size, tool=t.TOOL)
        played[batch_size] = rollout(samples, policy, cfg, generator=factory)
    for alone, together in zip(played[1], played[4]):
        assert torch.equal(alone.input_ids, together.input_ids)
        torch.testing.assert_close(alone.logprobs, together.logprobs, rtol=0, atol=1e-5)
    assert len({tuple(tr.input_ids.tolist()) for tr in played[4]}) == 4  # the streams differ between episodes


def test_per_row_sampling_follows_the_distribution():
    from mapo.engine.sampling import sample_per_row

    probs = torch.softmax(torch.randn(1, 50, generator=torch.Generator().manual_seed(0)), dim=-1)  # (1, V)
    probs[0, 7] = 0.0  # a blocked id: never drawn
    probs /= probs.sum()
    counts = torch.zeros(50)
    g = torch.Generator().manual_seed(5)
    for _ in range(4000):
        counts[sample_per_row(probs, [g])] += 1
    assert counts[7] == 0
    torch.testing.assert_close(counts / counts.sum(), probs[0], atol=0.03, rtol=0)  # 4000 draws: sd <= 0.008
