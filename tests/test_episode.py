"""The episode state machine (mapo.agent.episode) on hand-made turns: no model, no tokens."""

from __future__ import annotations

import pytest

from mapo.agent.episode import FINISH_REASONS, Episode, Observation, readable
from mapo.agent.protocol import ProtocolConfig, render_assistant_turn
from mapo.agent.tools import ToolConfig
from tiny_assets import half_red_half_blue

PROTOCOL = ProtocolConfig()
TOOL = ToolConfig()


def episode(**overrides) -> Episode:
    args = dict(protocol=PROTOCOL, tool=TOOL, max_images=5, max_turns=4)
    args.update(overrides)
    return Episode(half_red_half_blue(), (224, 224), **args)


def zoom(*bbox, description=None, label=None):
    return render_assistant_turn(description=description, bbox=list(bbox), label=label)


def test_answer_ends_the_episode():
    ep = episode()
    assert ep.assistant_turn(render_assistant_turn(think="easy", answer="B")) is None
    assert ep.finish_reason == "answer" and ep.answer_text == "B"
    assert ep.num_observations == 0 and ep.descriptions == [] and not ep.used_tool


def test_zoom_crops_the_original_and_the_next_description_is_kept():
    ep = episode()
    obs = ep.assistant_turn(zoom(112, 0, 224, 224, label="blue half"))
    assert isinstance(obs, Observation) and ep.finish_reason is None
    # View (224 px) -> original (448 px): every coordinate doubles.
    assert obs.call.valid and obs.call.box_original == (224.0, 0.0, 448.0, 448.0)
    assert obs.call.raw_bbox == (112.0, 0.0, 224.0, 224.0) and obs.call.label == "blue half"
    assert obs.crop.getpixel((3, 3)) == (0, 0, 255)
    assert [p.get("type") for p in obs.message["content"]] == ["text", "image", "text"]
    assert ep.num_observations == 0  # recorded only once the engine has appended it
    ep.add_observation(obs)
    assert ep.num_images == 2 and ep.used_tool
    assert ep.assistant_turn(render_assistant_turn(description="a blue area", answer="B")) is None
    assert ep.finish_reason == "answer" and ep.descriptions == ["a blue area"]


def test_bad_json_tool_call_gives_a_readable_error_observation_and_goes_on():
    ep = episode()
    obs = ep.assistant_turn('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2</tool_call>')
    assert obs is not None and obs.crop is None and not obs.call.valid
    assert obs.call.raw_bbox is None and obs.call.error.startswith("tool_call_json: ")
    # The model reads the sentence, not the error code.
    text = obs.message["content"][0]["text"]
    assert text == f"<tool_response>Error: {readable(obs.call.error)}</tool_response>"
    assert "tool_call_json" not in text and readable(obs.call.error) == obs.call.error.split(": ", 1)[1]
    ep.add_observation(obs)
    assert ep.finish_reason is None and ep.num_images == 1 and not ep.used_tool and ep.crops == [None]


def test_box_out_of_range_gives_an_error_observation():
    ep = episode()
    obs = ep.assistant_turn(zoom(300, 300, 400, 400))  # the view is 224 x 224
    assert obs is not None and obs.crop is None and not obs.call.valid
    assert "outside the image" in obs.call.error and obs.call.box_original is None
    assert obs.message["content"][0]["text"] == f"<tool_response>Error: {obs.call.error}</tool_response>"


def test_tool_call_on_the_last_allowed_turn_is_not_executed():
    ep = episode(max_turns=2)
    ep.add_observation(ep.assistant_turn(zoom(0, 0, 100, 100)))
    assert ep.assistant_turn(zoom(0, 0, 50, 50)) is None
    assert ep.finish_reason == "max_turns" and ep.num_observations == 1 and len(ep.turns) == 2


def test_a_crop_past_max_images_ends_the_episode():
    ep = episode(max_images=2)
    ep.add_observation(ep.assistant_turn(zoom(0, 0, 100, 100)))  # image 2 of 2
    # An error observation has no image: it still fits.
    ep.add_observation(ep.assistant_turn(zoom(300, 300, 400, 400)))
    assert ep.assistant_turn(zoom(0, 0, 50, 50)) is None
    assert ep.finish_reason == "max_images" and ep.num_observations == 2 and ep.num_images == 2


def test_token_limits():
    # A turn cut by the total budget with neither call nor answer: max_tokens; by the turn budget: max_new_tokens.
    ep = episode()
    assert ep.assistant_turn("<think>and so on", cut="max_tokens") is None and ep.finish_reason == "max_tokens"
    ep = episode()
    assert ep.assistant_turn("<think>and so on", cut="max_new_tokens") is None
    assert ep.finish_reason == "max_new_tokens"
    ep = episode()
    assert ep.assistant_turn("<think>done</think>") is None and ep.finish_reason == "no_tool_call"
    # An observation that does not fit the engine's budget: the engine ends the episode instead of appending.
    ep = episode()
    assert ep.assistant_turn(zoom(0, 0, 100, 100)) is not None
    ep.finish("max_tokens")
    assert ep.finish_reason == "max_tokens" and ep.num_observations == 0
    ep.finish("answer")  # the first reason wins
    assert ep.finish_reason == "max_tokens"


def test_engine_limit_reason_stops_a_tool_call():
    ep = episode(max_turns=None)
    assert ep.assistant_turn(zoom(0, 0, 100, 100), limit_reason="max_tokens") is None
    assert ep.finish_reason == "max_tokens"
    ep = episode(max_turns=None)
    assert ep.assistant_turn("no tags", limit_reason="max_turns") is None and ep.finish_reason == "max_turns"


def test_refusals():
    ep = episode()
    ep.assistant_turn(render_assistant_turn(answer="A"))
    with pytest.raises(ValueError, match="already ended"):
        ep.assistant_turn(render_assistant_turn(answer="B"))
    with pytest.raises(ValueError, match="finish reason"):
        episode().finish("bored")
    with pytest.raises(ValueError, match="original PIL image"):
        Episode("not an image", (224, 224), protocol=PROTOCOL, tool=TOOL, max_images=3)
    with pytest.raises(ValueError, match="max_images"):
        episode(max_images=0)
    assert readable("not a code: keep it") == "not a code: keep it"
    assert set(FINISH_REASONS) >= {"answer", "no_tool_call", "max_turns", "max_tokens", "max_images", "max_new_tokens"}


def test_a_second_tool_runs_through_the_same_episode_when_enabled():
    # The rotate tool (off by default) goes through the registry like zoom-in: its record names the tool and
    # its arguments, carries no region, and the observation is the whole image turned counter-clockwise.
    call = '<tool_call>{"name": "image_rotate_tool", "arguments": {"angle": 90}}</tool_call>'
    ep = episode(protocol=ProtocolConfig(extra_tools=("image_rotate_tool",)))
    obs = ep.assistant_turn(call)
    assert obs is not None and obs.call.valid and obs.call.error is None
    assert obs.call.tool == "image_rotate_tool" and obs.call.args == {"angle": 90}
    assert obs.call.box_original is None and obs.call.region is None
    # Left half red, right half blue; turned 90 degrees counter-clockwise, blue is on top and red below.
    w, h = obs.crop.size
    assert obs.crop.getpixel((w // 2, 2)) == (0, 0, 255) and obs.crop.getpixel((w // 2, h - 3)) == (255, 0, 0)
    # With the default tool set the same call is an error observation the model can read, and the episode goes on.
    ep = episode()
    obs = ep.assistant_turn(call)
    assert obs is not None and obs.crop is None and not obs.call.valid and obs.call.tool == ""
    assert ep.finish_reason is None
