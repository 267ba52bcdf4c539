"""The verl plugin: estimators in verl's registry, the agent loop's steps, the reward hook.

Needs the verl extra (see docs/scale_out.md); skipped with the install command otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip(
    "verl.experimental.agent_loop.tool_agent_loop",
    reason="verl extra not installed: pip install -c constraints.txt -e '.[verl]' && "
    "pip install -c constraints.txt --no-deps verl==0.9.1",
)

from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos, ray_trainer  # noqa: E402

from mapo.algo import advantage as adv  # noqa: E402
from mapo.integrations.verl import estimator as est  # noqa: E402
from mapo.integrations.verl.agent_loop import MapoZoomAgentLoop, ProtocolToolParser  # noqa: E402
from mapo.integrations.verl.episode import SemanticBatcher, ZoomEpisode  # noqa: E402
from mapo.integrations.verl.reward import compute_score  # noqa: E402
from mapo.agent.protocol import ProtocolConfig, render_assistant_turn  # noqa: E402
from mapo.agent.tools import ToolConfig  # noqa: E402
from tiny_assets import half_red_half_blue  # noqa: E402

# ----------------------------------------------------------------------------- estimators


def _verl_batch(seed: int, B: int = 12, T: int = 40, G: int = 4):
    """A batch as verl's compute_advantage sees it: rewards at the last response token,
    a response mask whose runs of 1 are assistant turns, uid strings, and the agent
    loop's per-observation scores (None = absent) and turn spans."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.long)
    spans, semantic = [], []
    for i in range(B):
        pos, row_spans = 0, []
        n_turns = int(torch.randint(1, 4, (1,), generator=g))
        for j in range(n_turns):
            length = int(torch.randint(2, 6, (1,), generator=g))
            gap = int(torch.randint(2, 5, (1,), generator=g))  # observation tokens between turns
            if pos + length > T:
                break
            mask[i, pos : pos + length] = 1
            row_spans.append([pos, pos + length])
            pos += length + gap
        spans.append(row_spans)
        semantic.append([None if torch.rand(1, generator=g) < 0.2 else float(torch.rand(1, generator=g) * 2 - 1)
                         for _ in range(len(row_spans) - 1)])
    rewards = torch.zeros(B, T)
    last = torch.tensor([r[-1][1] - 1 for r in spans])
    rewards[torch.arange(B), last] = torch.randint(0, 3, (B,), generator=g).float() * 0.5
    uid = np.array([f"prompt-{i // G}" for i in range(B)], dtype=object)
    return rewards, mask, uid, spans, semantic


def _reference(rewards, spans, semantic, uid, T, name, config):
    """mapo.algo.advantage called directly, segment ids built by a plain loop."""
    B = rewards.shape[0]
    seg = torch.full((B, T), -1, dtype=torch.long)
    for i, row in enumerate(spans):
        for j, (s, e) in enumerate(row):
            seg[i, s:e] = j
    K = max(max(len(r) for r in semantic), 1)
    sem = torch.full((B, K), float("nan"))
    for i, row in enumerate(semantic):
        for c, v in enumerate(row):
            if v is not None:
                sem[i, c] = v
    group = torch.tensor([int(u.split("-")[1]) for u in uid])
    return adv.get_estimator(name)(rewards.sum(-1), group, seg, sem, config=config)


@pytest.mark.parametrize("verl_name", ["mapo", "mapo_gated", "mapo_reward_mix"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_registry_estimator_matches_mapo_advantage(verl_name, seed):
    fn = core_algos.get_adv_estimator_fn(verl_name)
    assert fn is est.ADAPTERS[verl_name]
    rewards, mask, uid, spans, semantic = _verl_batch(seed)
    algo = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "mapo": {"beta": 0.3, "lam": 0.9}})
    # exactly the keyword arguments verl's compute_advantage passes (plus the passthrough's)
    got, returns = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo,
                      non_tensor_batch={"uid": uid, "mapo_semantic": np.array(semantic + [[]], dtype=object)[:-1],
                                        "mapo_segment_spans": np.array(spans + [[]], dtype=object)[:-1]})
    config = adv.AdvantageConfig(estimator=est.VERL_ESTIMATORS[verl_name], beta=0.3, lam=0.9)
    want = _reference(rewards, spans, semantic, uid, mask.shape[1], est.VERL_ESTIMATORS[verl_name], config)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(got, returns)
    assert (got[mask == 0] == 0).all()
    # without spans the runs of the response mask give the same segments
    again, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo,
                  non_tensor_batch={"mapo_semantic": semantic})
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_mapo_grpo_equals_verl_grpo():
    rewards, mask, uid, _, _ = _verl_batch(5, B=16, G=4)
    ours, _ = core_algos.get_adv_estimator_fn("mapo_grpo")(token_level_rewards=rewards, response_mask=mask, index=uid, config=None)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_segments_from_mask_by_hand():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0, 0, 0]])
    want = torch.tensor([[0, 0, -1, -1, 1, -1, 2, 2], [-1, 0, 0, 0, -1, -1, -1, -1]])
    assert torch.equal(est.segments_from_mask(mask), want)


def test_passthrough_reaches_estimator_through_verl_compute_advantage():
    est.install_non_tensor_passthrough()
    est.install_non_tensor_passthrough()  # idempotent: wraps once
    assert not getattr(ray_trainer.compute_advantage.__wrapped__, "_mapo_passthrough", False)
    rewards, mask, uid, spans, semantic = _verl_batch(3)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask},
        non_tensors={"uid": uid, "mapo_semantic": np.array(semantic + [[]], dtype=object)[:-1],
                     "mapo_segment_spans": np.array(spans + [[]], dtype=object)[:-1]},
    )
    algo = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "mapo": {"beta": 0.5}})
    out = ray_trainer.compute_advantage(data, adv_estimator="mapo", config=algo)
    want = _reference(rewards, spans, semantic, uid, mask.shape[1], "mapo", adv.AdvantageConfig(beta=0.5))
    torch.testing.assert_close(out.batch["advantages"], want, rtol=0, atol=1e-6)
    # other estimators still go through verl's own code
    data2 = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid})
    rloo = ray_trainer.compute_advantage(data2, adv_estimator="rloo", config=OmegaConf.create({}))
    theirs, _ = core_algos.compute_rloo_outcome_advantage(rewards, mask, uid)
    torch.testing.assert_close(rloo.batch["advantages"], theirs)


def test_estimator_refuses_missing_semantic_with_the_fix():
    rewards, mask, uid, _, _ = _verl_batch(0)
    with pytest.raises(ValueError, match="mapo_zoom_agent.*mapo.integrations.verl.main"):
        core_algos.get_adv_estimator_fn("mapo")(token_level_rewards=rewards, response_mask=mask, index=uid, config=None)


def test_estimator_config_errors_name_the_key():
    rewards, mask, uid, _, semantic = _verl_batch(0)
    fn = core_algos.get_adv_estimator_fn("mapo")
    with pytest.raises(ValueError, match="algorithm.mapo.betta"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uid,
           config=OmegaConf.create({"mapo": {"betta": 1}}), non_tensor_batch={"mapo_semantic": semantic})
    with pytest.raises(ValueError, match="contradicts"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uid,
           config={"mapo": {"estimator": "grpo"}}, non_tensor_batch={"mapo_semantic": semantic})
    with pytest.raises(ValueError, match=r"index must have shape \(B,\)"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uid[:3], config=None,
           non_tensor_batch={"mapo_semantic": semantic})


# ----------------------------------------------------------------------------- episode logic

PROTOCOL = ProtocolConfig()
TOOL = ToolConfig()


def test_episode_zooms_on_the_original_through_the_view_mapping():
    ep = ZoomEpisode(half_red_half_blue(), protocol=PROTOCOL, tool=TOOL, max_images=3, view_wh=(224, 224))
    pending = ep.assistant_turn(render_assistant_turn(bbox=[112, 0, 224, 224], label="blue half"), (0, 10))
    assert pending is not None and pending.crop is not None
    assert pending.call.box_original == (224.0, 0.0, 448.0, 448.0)  # view x2 -> original
    assert pending.crop.getpixel((5, 5)) == (0, 0, 255)
    assert [p.get("type") for p in pending.message["content"]] == ["text", "image", "text"]
    assert pending.message["content"][1]["image"] is pending.crop
    ep.add_observation(pending)
    assert ep.assistant_turn(render_assistant_turn(description="a blue area", answer="B"), (14, 20)) is None
    assert ep.finish_reason == "answer" and ep.answer_text == "B"
    assert ep.descriptions == ["a blue area"] and ep.spans == [(0, 10), (14, 20)]
    fields = ep.extra_fields([0.25])
    assert fields["mapo_semantic"] == [0.25] and fields["mapo_segment_spans"] == [[0, 10], [14, 20]]
    assert fields["mapo_used_tool"] is True and fields["mapo_invalid_calls"] == 0
    json.dumps(fields)  # plain data: verl ships it between processes


def test_episode_bad_call_gives_an_error_observation_and_goes_on():
    ep = ZoomEpisode(half_red_half_blue(), protocol=PROTOCOL, tool=TOOL, max_images=3, view_wh=(224, 224))
    pending = ep.assistant_turn('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2</tool_call>', (0, 5))
    assert pending is not None and pending.crop is None and not pending.call.valid
    assert pending.message["content"][0]["text"].startswith("<tool_response>Error:")
    ep.add_observation(pending)
    assert ep.finish_reason is None and ep.extra_fields([None])["mapo_invalid_calls"] == 1


def test_episode_limits():
    ep = ZoomEpisode(half_red_half_blue(), protocol=PROTOCOL, tool=TOOL, max_images=1, view_wh=(224, 224))
    assert ep.assistant_turn(render_assistant_turn(bbox=[0, 0, 100, 100]), (0, 5)) is None
    assert ep.finish_reason == "max_images" and ep.num_observations == 0
    ep = ZoomEpisode(half_red_half_blue(), protocol=PROTOCOL, tool=TOOL, max_images=3, view_wh=(224, 224))
    assert ep.assistant_turn(render_assistant_turn(bbox=[0, 0, 100, 100]), (0, 5), limit_reason="max_turns") is None
    assert ep.finish_reason == "max_turns"
    with pytest.raises(ValueError, match="already ended"):
        ep.assistant_turn("<answer>A</answer>", (6, 8))
    with pytest.raises(ValueError, match="original PIL image"):
        ZoomEpisode("not an image", protocol=PROTOCOL, tool=TOOL, max_images=3)


def test_semantic_batcher_scores_concurrent_episodes_in_one_call():
    seen = []

    def score_fn(episodes):
        seen.append(len(episodes))
        K = max(e.num_observations for e in episodes)
        scores = torch.full((len(episodes), K), float("nan"))
        for i, e in enumerate(episodes):
            scores[i, : e.num_observations] = torch.arange(e.num_observations) + 10 * i
        return SimpleNamespace(scores=scores)

    def episode(n_obs):
        ep = ZoomEpisode(half_red_half_blue(), protocol=PROTOCOL, tool=TOOL, max_images=9, view_wh=(224, 224))
        for k in range(n_obs):
            ep.add_observation(ep.assistant_turn(render_assistant_turn(bbox=[0, 0, 100, 100]), (10 * k, 10 * k + 5)))
        return ep

    async def main():
        batcher = SemanticBatcher(score_fn, max_episodes=8, max_wait_s=0.05)
        return await asyncio.gather(*(batcher.score(episode(n)) for n in (1, 2, 0, 3))), batcher.calls

    results, calls = asyncio.run(main())
    assert calls == 1 and seen == [3]  # the episode without observations is not sent
    assert results == [[0.0], [10.0, 11.0], [], [20.0, 21.0, 22.0]]


# ----------------------------------------------------------------------------- agent loop vs a fake server


class CharTokenizer:
    """One token per character; id 0 is the end-of-turn token."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i != 0)


class FakeServer:
    """Replays scripted assistant turns and records the prompts it was sent."""

    def __init__(self, turns):
        self.turns = list(turns)
        self.calls = []

    async def generate(self, request_id, prompt_ids, sampling_params, image_data=None, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append({"prompt_len": len(prompt_ids), "images": len(image_data or [])})
        return TokenOutput(token_ids=[ord(c) for c in self.turns.pop(0)] + [0])


class CharLoop(MapoZoomAgentLoop):
    """The agent loop with verl's tokenizer/processor plumbing replaced by characters."""

    async def process_multi_modal_info(self, messages):
        return {"images": [half_red_half_blue().resize((224, 224))]}

    def _assert_mm_supported(self, has_multi_modal):
        pass

    async def ct_build_initial_tokens(self, messages, **kwargs):
        return self.tokenizer.encode("PROMPT")

    async def ct_merge_assistant_token(self, runtime, assistant, mask, logprobs=None, assistant_logprobs=None):
        return SimpleNamespace(token_ids=runtime + assistant), mask + [1] * len(assistant), None

    async def ct_merge_context_msg(self, previous, updated, runtime, mask, logprobs=None, tools=None):
        new = self.tokenizer.encode("".join(p.get("text", "<img>") for p in updated[-1]["content"]))
        return SimpleNamespace(token_ids=runtime + new), mask + [0] * len(new), None


def _loop(turns, response_length=2000, max_images=5, batcher=None):
    loop = object.__new__(CharLoop)  # verl's __init__ needs a trainer config and a model; set what run() reads
    loop.rollout_config = OmegaConf.create({"full_determinism": False, "multi_turn": {}})
    loop.server_manager = FakeServer(turns)
    loop.tokenizer = CharTokenizer()
    loop.processor = SimpleNamespace(image_processor=SimpleNamespace(
        size={"shortest_edge": 28 * 28 * 4, "longest_edge": 224 * 224}, patch_size=14, merge_size=2))
    loop.mm_processor_kwargs = {}
    loop.max_user_turns, loop.max_assistant_turns, loop.max_parallel_calls = None, 4, 1
    loop.response_length, loop.prompt_length = response_length, 1000
    loop.tools, loop.tool_schemas = {}, []
    loop.protocol, loop.tool_config, loop.max_images = PROTOCOL, TOOL, max_images
    loop.tool_parser = ProtocolToolParser(PROTOCOL, loop.tokenizer)
    loop.batcher = batcher
    return loop


def _raw_prompt():
    return [{"role": "user", "content": [{"type": "image", "image": half_red_half_blue()}, {"type": "text", "text": "Which colour?"}]}]


def test_agent_loop_runs_turns_against_a_fake_server():
    turns = [
        render_assistant_turn(think="look right", bbox=[112, 0, 224, 224], label="blue"),
        '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": "oops"}}</tool_call>',
        render_assistant_turn(description="all blue", answer="B"),
    ]

    def score_fn(episodes):
        return SimpleNamespace(scores=torch.tensor([[0.5, float("nan")]]))

    batcher = SemanticBatcher(score_fn, max_episodes=1)
    loop = _loop(turns, batcher=batcher)
    out = asyncio.run(loop.run({}, raw_prompt=_raw_prompt()))
    f = out.extra_fields
    assert f["mapo_finish_reason"] == "answer" and f["mapo_answer"] == "B"
    assert f["mapo_semantic"] == [0.5, None]  # the verifier's NaN (no crop) is absent
    assert f["mapo_boxes_original"][0] == [224.0, 0.0, 448.0, 448.0] and f["mapo_boxes_original"][1] is None
    assert f["mapo_descriptions"] == [None, "all blue"] and f["mapo_invalid_calls"] == 1
    # the server saw the crop after the first call, not after the error observation
    assert [c["images"] for c in loop.server_manager.calls] == [1, 2, 2]
    # spans are the mask-1 runs of the response, one per assistant turn
    mask = torch.tensor(out.response_mask)[None]
    runs = est.segments_from_mask(mask)[0]
    spans_seg = est.segments_from_spans([f["mapo_segment_spans"]], mask)[0]
    assert torch.equal(runs, spans_seg) and int(runs.max()) == 2
    # the reward hook reads the loop's fields: correct, with a tool, well-formed except the bad call
    score = compute_score("deepeyes", "", "B", {**f, "options": ["red", "blue"]})
    assert score == {"score": pytest.approx(0.8 * 1 + 0.2 * -1 + 1.2 * 1), "acc": 1.0, "fmt": -1.0, "used_tool": 1.0}


def test_agent_loop_does_not_append_an_observation_past_the_budget():
    turns = [render_assistant_turn(bbox=[0, 0, 100, 100]), render_assistant_turn(answer="A")]
    loop = _loop(turns, response_length=len(turns[0]) + 5)
    out = asyncio.run(loop.run({}, raw_prompt=_raw_prompt()))
    assert out.extra_fields["mapo_finish_reason"] == "max_tokens"
    assert out.extra_fields["mapo_semantic"] == [] and sum(out.response_mask) == len(out.response_mask)


def test_agent_loop_needs_anhalf_red_half_blue():
    loop = _loop([])
    with pytest.raises(ValueError, match="the prompt has no image"):
        asyncio.run(loop.run({}, raw_prompt=[{"role": "user", "content": "hi"}]))


# ----------------------------------------------------------------------------- reward hook


def test_reward_single_turn_fallback_and_weights():
    s = compute_score("x", "<answer>(B)</answer>", "B", {"options": ["cat", "dog"]})
    assert s == {"score": pytest.approx(0.8), "acc": 1.0, "fmt": 0.0, "used_tool": 0.0}
    s = compute_score("x", "<answer>A dog</answer>", "a dog", None, w_acc=1.0)
    assert s["score"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reward_kwargs.w_bogus"):
        compute_score("x", "<answer>A</answer>", "A", {}, w_bogus=1)
    with pytest.raises(ValueError, match="ground_truth"):
        compute_score("x", "<answer>A</answer>", None, {})
    assert math.isclose(compute_score("x", "no answer", "A", {})["score"], -0.2)


# ----------------------------------------------------------------------------- launch checks


def _verl_config(*overrides):
    import os

    import verl.trainer.main_ppo as main_ppo
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(os.path.dirname(main_ppo.__file__), "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def test_launch_check_says_what_to_change(tmp_path):
    from mapo.integrations.verl.main import check_launch_config

    bad = _verl_config("algorithm.adv_estimator=mapo", "trainer.use_v1=true", "actor_rollout_ref.rollout.n=1")
    problems = "\n".join(check_launch_config(bad))
    assert "trainer.use_v1=false" in problems
    assert "default_agent_loop=mapo_zoom_agent" in problems
    assert "n >= 2" in problems
    clip = tmp_path / "clip"
    clip.mkdir()
    loop_yaml = tmp_path / "agent_loop.yaml"
    loop_yaml.write_text(f"- name: mapo_zoom_agent\n  _target_: x\n  verifier_path: {clip}\n")
    good = _verl_config(
        "algorithm.adv_estimator=mapo", "trainer.use_v1=false", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.agent.default_agent_loop=mapo_zoom_agent",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loop_yaml}", "+algorithm.mapo.beta=0.4",
    )
    assert check_launch_config(good) == []
    typo = _verl_config("algorithm.adv_estimator=mapo_gated", "trainer.use_v1=false", "actor_rollout_ref.rollout.n=4",
                        "actor_rollout_ref.rollout.agent.default_agent_loop=mapo_zoom_agent",
                        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loop_yaml}", "+algorithm.mapo.beta=2")
    assert any("beta must be <= 1" in p for p in check_launch_config(typo))
    assert check_launch_config(_verl_config("algorithm.adv_estimator=grpo")) == []  # verl's own: not ours to check


def test_example_launch_script_fits_verl_config_and_passes_the_checks(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from omegaconf import OmegaConf

    from mapo.integrations.verl.main import check_launch_config

    root = Path(__file__).resolve().parents[1] / "examples" / "verl"
    script = (root / "run_qwen2_5_vl_7b.sh").read_text()
    body = script.split("python -m mapo.integrations.verl.main", 1)[1]
    env = {"$TRAIN": "t.parquet", "$VAL": "v.parquet", "$MODEL": "/models/qwen", "$HERE": str(root)}
    overrides = []
    for line in body.splitlines():
        m = re.match(r'\s+(\+?[\w.]+=\S+?)\s*\\?$', line)
        if m:
            item = m.group(1).replace('"', "")
            for k, v in env.items():
                item = item.replace(k, v)
            overrides.append(item.replace("'", ""))
    assert len(overrides) > 30
    config = _verl_config(*overrides)  # unknown keys would raise here
    monkeypatch.setenv("MAPO_VERIFIER", str(tmp_path))
    assert check_launch_config(config) == []
    entry = OmegaConf.load(root / "agent_loop.yaml")[0]
    assert entry._target_ == "mapo.integrations.verl.agent_loop.MapoZoomAgentLoop"
    import inspect

    accepted = set(inspect.signature(MapoZoomAgentLoop.__init__).parameters)
    assert set(entry.keys()) - {"name", "_target_"} <= accepted


# ----------------------------------------------------------------------------- the policy's patch factor


def test_patch_factor_comes_from_the_policy_directory(tmp_path):
    from mapo.integrations.verl.agent_loop import policy_factor, processor_view_size
    from mapo.policy import build_tiny_policy
    from mapo.agent.protocol import ProtocolConfig

    qwen3 = build_tiny_policy("tiny", arch="qwen3_vl", text_layers=1, vision_depth=1)
    qwen3.protocol = ProtocolConfig()
    qwen3.save(tmp_path / "q3")
    assert json.loads((tmp_path / "q3" / "mapo_protocol.json").read_text())["vision"] == {"patch_size": 16, "merge_size": 2}
    assert policy_factor(str(tmp_path / "q3"), qwen3.processor) == 32
    assert processor_view_size(qwen3.processor, half_red_half_blue().resize((200, 100)), 32) == (192, 96)
    # A processor of another model next to the record is refused; no record and no processor fields too.
    qwen25 = build_tiny_policy("tiny", text_layers=1, vision_depth=1)
    with pytest.raises(ValueError, match="records a patch factor of 32 px but the processor's patch_size x merge_size is 28"):
        policy_factor(str(tmp_path / "q3"), qwen25.processor)
    assert policy_factor(None, qwen25.processor) == 28  # a checkpoint from elsewhere: the processor's own
    with pytest.raises(ValueError, match="cannot tell the policy's patch factor"):
        policy_factor(None, SimpleNamespace(image_processor=SimpleNamespace()))
