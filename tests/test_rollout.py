"""The rollout engine on the tiny random Qwen2.5-VL: token exactness, masks, robustness, budgets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mapo.agent import protocol
from mapo.data import synth
from mapo.engine.rollout import (
    FINISH_REASONS,
    RolloutConfig,
    collate,
    finish_counts,
    rollout,
    rollout_stats,
    sequence_logprobs,
)
from mapo.engine.sampling import inverse_cdf, top_p_filter
from mapo.data.task import tool_config_for

LEVEL = synth.level_config("easy")
TOOL = tool_config_for(LEVEL)


@pytest.fixture(scope="module")
def samples():
    return synth.generate(3, seed=0, config=LEVEL)


def config(**overrides) -> RolloutConfig:
    base = dict(group_size=2, max_turns=4, max_new_tokens_per_turn=48, max_total_tokens=2048, tool=TOOL, batch_size=8)
    base.update(overrides)
    return RolloutConfig(**base)


def zoom(x1, y1, x2, y2, description=None):
    return protocol.render_assistant_turn(description=description, bbox=(x1, y1, x2, y2))


# Scripted turns (group, member) -> turns; unlisted turns are sampled from the random model.
# Different crop boxes give different crop sizes (grids); scripts end at different turns.
SCRIPTS = {
    (0, 0): [zoom(0, 0, 50, 30), zoom(20, 20, 40, 100, "a square"), protocol.render_assistant_turn(answer="B")],
    (1, 0): [zoom(10, 10, 110, 60)],  # then sampled turns after the observation
    (2, 0): [zoom(0, 0, 40, 40), protocol.render_assistant_turn(description="red", answer="A")],
    (2, 1): ['<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2,</tool_call>'],  # bad JSON
}


def scripted(group, member, turn):
    script = SCRIPTS.get((group, member), [])
    return script[turn] if turn < len(script) else None


@pytest.fixture(scope="module")
def mixed(policy, samples):
    """A batch with scripted multi-turn episodes next to freely sampled ones."""
    return rollout(samples, policy, config(), forced_turns=scripted)


def test_logprobs_match_training_forward(policy, mixed):
    turns = {len(t.turns) for t in mixed}
    grids = {tuple(g) for t in mixed for g in t.image_grid_thw[1:].tolist()}
    assert len(turns) >= 3, f"need trajectories with different numbers of turns, got {turns}"
    assert len(grids) >= 2, f"need crops of different sizes, got {grids}"
    batch = collate(mixed, policy)
    with torch.no_grad():
        logp = sequence_logprobs(policy.model, batch)
    mask = batch.loss_mask
    assert mask.sum() > 100
    diff = (logp - batch.old_logprobs).abs()
    assert float(diff[mask].max()) < 1e-4
    assert float(logp[~mask].abs().max()) == 0.0
    # The check has teeth: a different temperature moves the log-probs far beyond 1e-4.
    with torch.no_grad():
        other = sequence_logprobs(policy.model, batch, temperature=0.7)
    assert float((other - batch.old_logprobs)[mask].abs().max()) > 1e-2


def test_scripted_turns_are_kept_as_ids(policy, mixed):
    tok = policy.tokenizer
    traj = next(t for t in mixed if (t.group, t.member) == (0, 0))
    assert traj.finish_reason == "answer" and traj.answer_text == "B"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for j, text in enumerate(SCRIPTS[(0, 0)]):
        got = traj.input_ids[traj.segment_ids == j].tolist()
        assert got == tok(text, add_special_tokens=False)["input_ids"] + [im_end]
    assert len(traj.crops) == 2 and all(c is not None for c in traj.crops)
    assert traj.descriptions == ["a square", None]


def test_whole_sequence_equals_the_processor_rendering(policy, mixed):
    """All-scripted episode: our ids == the processor's ids for the whole conversation."""
    traj = next(t for t in mixed if (t.group, t.member) == (2, 0))
    messages = protocol.initial_messages(traj.sample.question, traj.sample.options)
    for j, text in enumerate(SCRIPTS[(2, 0)]):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        if j < len(traj.tool_calls):
            messages.append(protocol.observation_message())
    text = policy.tokenizer.apply_chat_template(messages, tokenize=False)
    ref = policy.processor(text=[text], images=traj.images, return_tensors="pt")
    n = len(traj.input_ids)
    assert ref["input_ids"][0, :n].tolist() == traj.input_ids.tolist()
    assert ref["image_grid_thw"].tolist() == traj.image_grid_thw.tolist()
    assert torch.equal(ref["pixel_values"], torch.cat(traj.pixel_values))


def test_loss_mask_covers_exactly_the_assistant_turns(policy, mixed):
    tok = policy.tokenizer
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    for t in mixed:
        ids, mask, seg = t.input_ids, t.loss_mask, t.segment_ids
        assert len(ids) == len(mask) == len(seg) == len(t.logprobs)
        assert not mask[ids == image_pad].any(), "image tokens must be outside the loss"
        assert not mask[ids == im_start].any(), "message headers are not generated by the policy"
        assert torch.equal(seg >= 0, mask) and bool((t.logprobs[~mask] == 0).all())
        assert bool((t.logprobs[mask] < 0).all())
        # One contiguous run per assistant turn, numbered in order, each right after "<|im_start|>assistant\n".
        starts = [i for i in range(len(ids)) if mask[i] and (i == 0 or not mask[i - 1])]
        assert [int(seg[s]) for s in starts] == list(range(len(t.turns)))
        for s in starts:
            assert ids[s - 1 - len(header): s].tolist() == [im_start] + header
        # Observations (all non-loss tokens after the first turn) are never in the loss, and
        # every assistant token is: the total generated count equals the turns' lengths.
        per_turn = [int((seg == j).sum()) for j in range(len(t.turns))]
        assert sum(per_turn) == t.num_generated and all(n >= 1 for n in per_turn)
        n_image_tokens = int((ids == image_pad).sum())
        assert n_image_tokens == int(t.image_grid_thw.prod(dim=1).sum()) // 4


def test_collate_orders_images_by_sequence(policy, mixed):
    batch = collate(mixed, policy)
    B, T = batch.input_ids.shape
    assert B == len(mixed) and T == max(len(t.input_ids) for t in mixed)
    assert batch.image_grid_thw.tolist() == [g for t in mixed for g in t.image_grid_thw.tolist()]
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(dim=1).sum())
    assert torch.equal(batch.mm_token_type_ids.bool(), batch.input_ids == policy.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert batch.group.tolist() == [t.group for t in mixed]
    assert not batch.loss_mask[batch.attention_mask == 0].any()


def test_select_equals_collating_the_rows_alone(policy, mixed):
    """A step collates once; each mini-batch is cut out of that batch, tensor for tensor what collating it gives."""
    batch = collate(mixed, policy)
    lengths = [len(t.input_ids) for t in mixed]
    short = sorted(range(len(mixed)), key=lengths.__getitem__)[:2]  # a subset shorter than the batch: T' < T
    assert max(lengths[i] for i in short) < batch.input_ids.shape[1]
    for rows in (short, [5, 0, 3], [2], list(range(len(mixed)))):
        part, alone = batch.select(rows), collate([mixed[i] for i in rows], policy)
        for field in dataclasses.fields(alone):
            got, want = getattr(part, field.name), getattr(alone, field.name)
            assert got.dtype == want.dtype and torch.equal(got, want), (rows, field.name)
    with pytest.raises(ValueError, match="at least one row"):
        batch.select([])


def test_garbage_policy_never_crashes_and_errors_are_counted(policy, samples, mixed):
    bad = next(t for t in mixed if (t.group, t.member) == (2, 1))
    assert bad.tool_calls[0].valid is False and bad.tool_calls[0].error.startswith("tool_call_json")
    assert bad.crops == [None] and len(bad.images) == 1  # an error observation is text only
    # Out-of-image and degenerate boxes become error observations; the episode goes on.
    outside = {(0, 0): [zoom(500, 500, 600, 600), zoom(5, 5, 5, 9), "no tags at all"]}
    trajs = rollout(samples[:1], policy, config(group_size=1), forced_turns=lambda g, m, k: outside[(g, m)][k])
    (t,) = trajs
    assert [c.valid for c in t.tool_calls] == [False, False]
    assert "outside the image" in t.tool_calls[0].error
    assert t.finish_reason == "no_tool_call"
    stats = rollout_stats(mixed + trajs)
    assert stats["invalid_tool_calls"] >= 3 and stats["finish/no_tool_call"] >= 1
    assert sum(finish_counts(mixed).values()) == len(mixed) == 6
    assert all(t.finish_reason in FINISH_REASONS for t in mixed)


def test_random_policy_endless_text_ends_cleanly(policy, samples):
    trajs = rollout(samples, policy, config(group_size=4, max_new_tokens_per_turn=12, batch_size=5))
    assert len(trajs) == 12
    assert [(t.group, t.member) for t in trajs] == [(g, m) for g in range(3) for m in range(4)]
    counts = finish_counts(trajs)
    assert sum(counts.values()) == 12
    assert counts["max_new_tokens"] >= 1  # a random model rarely closes its turn


def test_vision_tokens_are_never_sampled(policy, samples):
    """Make vision tokens overwhelmingly likely; the sampler must still never emit them."""
    head = policy.model.lm_head.weight
    vision = torch.tensor(policy.vision_token_ids)
    saved = head.data[vision].clone()
    try:
        with torch.no_grad():
            head.data[vision] = 50.0 * torch.randn_like(saved).sign()
        trajs = rollout(samples[:1], policy, config(group_size=2, max_new_tokens_per_turn=8, max_turns=1))
    finally:
        head.data[vision] = saved
    for t in trajs:
        generated = t.input_ids[t.loss_mask]
        assert not torch.isin(generated, vision).any()
        assert t.num_generated == 8


def test_budgets_end_episodes_before_appending(policy, samples):
    forced = lambda g, m, k: zoom(0, 0, 56, 56)  # noqa: E731 - every turn zooms
    # Image budget: the first crop would be image 2 of at most 1.
    (t,) = rollout(samples[:1], policy, config(group_size=1, max_images=1), forced_turns=forced)
    assert t.finish_reason == "max_images" and len(t.images) == 1 and t.tool_calls == []
    assert len(t.turns) == 1
    # Turn budget: the tool call of the last allowed turn is not executed.
    (t,) = rollout(samples[:1], policy, config(group_size=1, max_turns=2), forced_turns=forced)
    assert t.finish_reason == "max_turns" and len(t.turns) == 2 and len(t.tool_calls) == 1
    # Token budget: room for the prompt and one turn, not for a 64-token observation.
    prompt = rollout(samples[:1], policy, config(group_size=1, max_turns=1, max_new_tokens_per_turn=1))[0]
    n_prompt = len(prompt.input_ids) - 1
    limit = n_prompt + 60
    (t,) = rollout(samples[:1], policy, config(group_size=1, max_total_tokens=limit), forced_turns=forced)
    assert t.finish_reason == "max_tokens" and len(t.input_ids) <= limit and t.tool_calls == []
    # Sampled turns are cut at the total budget too.
    (t,) = rollout(samples[:1], policy, config(group_size=1, max_total_tokens=n_prompt + 5))
    assert len(t.input_ids) == n_prompt + 5 and t.finish_reason in ("max_tokens", "answer", "no_tool_call")
    (t,) = rollout(samples[:1], policy, config(group_size=1, max_total_tokens=n_prompt))
    assert t.finish_reason == "prompt_too_long" and t.num_generated == 0


def test_greedy_is_deterministic_and_seed_controls_sampling(policy, samples):
    a = rollout(samples[:1], policy, config(group_size=2, greedy=True, max_new_tokens_per_turn=6, max_turns=1))
    assert torch.equal(a[0].input_ids, a[1].input_ids)
    s1 = rollout(samples[:1], policy, config(group_size=2, seed=1, max_new_tokens_per_turn=6, max_turns=1))
    s2 = rollout(samples[:1], policy, config(group_size=2, seed=1, max_new_tokens_per_turn=6, max_turns=1))
    s3 = rollout(samples[:1], policy, config(group_size=2, seed=2, max_new_tokens_per_turn=6, max_turns=1))
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(s1, s2))
    assert not all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(s1, s3))


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # Mass before each token: 0, .5, .8, .95 -> with top_p = 0.7 keep the first two.
    assert torch.equal(top_p_filter(probs, 0.7), torch.tensor([[0.5, 0.3, 0.0, 0.0]]))
    assert torch.equal(top_p_filter(probs, 0.1), torch.tensor([[0.5, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("group_size", 0, "group_size"),
        ("temperature", 0.0, "temperature"),
        ("top_p", 1.5, "top_p"),
        ("max_images", -1, "max_images"),
        ("batch_size", True, "batch_size"),
    ],
)
def test_config_rejects_bad_values(field, value, words):
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(RolloutConfig(), **{field: value})


def test_bad_arguments_have_clear_errors(policy, samples):
    with pytest.raises(ValueError, match="samples must be a sequence"):
        rollout("not samples", policy, config())
    with pytest.raises(ValueError, match="config must be a RolloutConfig"):
        rollout(samples, policy, {"group_size": 2})
    with pytest.raises(ValueError, match="policy must be"):
        rollout(samples, object(), config())
    with pytest.raises(ValueError, match="non-empty sequence of Trajectory"):
        collate([], policy)
    with pytest.raises(ValueError, match="must be a TrainBatch"):
        sequence_logprobs(policy.model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_batched_inverse_cdf_sampling_follows_each_row_distribution():
    """The shared-stream sampler: one uniform per row, each row drawn from its own distribution."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 30, generator=g), dim=-1)  # (2, V)
    probs[:, 4] = 0.0  # a blocked id: never drawn
    rows = probs.repeat(2000, 1)  # (4000, V): rows alternate between the two distributions
    tokens = inverse_cdf(rows, torch.rand(rows.shape[0], generator=g, dtype=torch.float64))
    assert not bool((tokens == 4).any())
    for r in range(2):
        counts = torch.bincount(tokens[r::2], minlength=30).float()
        torch.testing.assert_close(counts / counts.sum(), probs[r] / probs[r].sum(), atol=0.04, rtol=0)  # sd <= 0.011
