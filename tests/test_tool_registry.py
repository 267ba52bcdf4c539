"""The tool interface: the registry, ToolCall(name, args) from the parser, run_tool, rotate end to end,
the prompt with and without extra tools, and records/report of a non-zoom call."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image

from mapo.agent import tools
from mapo.agent.protocol import DEFAULT_SYSTEM_TEMPLATE, ProtocolConfig, parse_turn, render_assistant_turn, render_call, system_prompt
from mapo.metrics.records import PredictionRecord, TurnRecord
from mapo.report.html import CardImages, render_card
from mapo.agent.tools import RotateArgs, ToolConfig, ZoomArgs, run_tool, zoom_in

ROTATE = ProtocolConfig(extra_tools=("image_rotate_tool",))

# The system prompt of the default protocol as the code before the tool registry rendered it.
# Trained policies were prompted with exactly this text: it must not change by a byte.
DEFAULT_PROMPT = (
    "You are a helpful assistant that answers questions about an image. You can zoom in on the image with a tool.\n\n"
    "# Tool\nimage_zoom_in_tool: crop a region of the image and see it at higher resolution.\n"
    'Arguments (JSON): {"bbox_2d": [x1, y1, x2, y2], "label": "<what you expect to see>"}\n'
    "bbox_2d is in pixels of the image as you see it; (x1, y1) is the top-left corner, (x2, y2) the bottom-right.\n\n"
    "# Format\nEach turn: optionally <think>your reasoning</think>, then exactly one of\n"
    '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2], "label": "..."}}</tool_call>\n'
    "or <answer>your final answer</answer>.\n"
    "The zoomed view comes back as an image inside <tool_response></tool_response>. Every turn after a view must "
    "open with <description>what the view shows</description> (at most 300 characters)."
)


def call(name: str, arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def corner_image(w: int = 112, h: int = 56) -> Image.Image:
    """Grey, with a red 8x8 block in the top-left corner (to see where rotation puts it)."""
    img = Image.new("RGB", (w, h), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 8, 8))
    return img


# ----------------------------------------------------------------------------- registry


def test_registry_holds_zoom_first_and_rotate():
    assert list(tools.TOOLS)[0] == tools.ZOOM_TOOL == "image_zoom_in_tool"
    assert tools.get_tool("image_rotate_tool").name == "image_rotate_tool"
    assert tools.tool_of(ZoomArgs((1, 2, 3, 4))) is tools.TOOLS["image_zoom_in_tool"]
    assert tools.tool_of(RotateArgs(90)) is tools.TOOLS["image_rotate_tool"]
    with pytest.raises(ValueError, match="unknown tool 'crop'.*registered tools: image_zoom_in_tool, image_rotate_tool"):
        tools.get_tool("crop")
    with pytest.raises(ValueError, match="not the arguments of a registered tool"):
        tools.tool_of((1, 2, 3, 4))


def test_default_prompt_is_byte_identical_and_describes_zoom_only():
    assert system_prompt() == DEFAULT_PROMPT
    assert system_prompt(ProtocolConfig()) == DEFAULT_PROMPT
    assert "image_rotate_tool" not in DEFAULT_PROMPT
    # The zoom tool's own section is the one the default template holds (no drift between the two).
    zoom = tools.TOOLS["image_zoom_in_tool"]
    assert zoom.describe("$tool_name", ProtocolConfig()) in DEFAULT_SYSTEM_TEMPLATE


def test_extra_tool_appends_its_section_and_only_its_own():
    prompt = system_prompt(ROTATE)
    assert prompt.startswith(DEFAULT_PROMPT + "\n\n# Tool\nimage_rotate_tool: ")
    assert prompt.count("# Tool\n") == 2
    assert '<tool_call>{"name": "image_rotate_tool", "arguments": {"angle": 90}}</tool_call>' in prompt


@pytest.mark.parametrize(
    "extra, match",
    [
        (("crop",), "unknown tool 'crop'"),
        (("image_zoom_in_tool",), "always offered"),
        ("image_rotate_tool", "list of tool names"),
    ],
)
def test_extra_tools_are_checked(extra, match):
    with pytest.raises(ValueError, match=match):
        ProtocolConfig(extra_tools=extra)


def test_extra_tool_names_must_differ_from_the_zoom_name():
    with pytest.raises(ValueError, match="distinct"):
        ProtocolConfig(tool_name="image_rotate_tool", extra_tools=("image_rotate_tool",))
    assert ProtocolConfig(extra_tools=["image_rotate_tool"]).extra_tools == ("image_rotate_tool",)  # list -> tuple


# ----------------------------------------------------------------------------- parsing into ToolCall(name, args)


def test_parser_gives_typed_args_per_tool():
    zoom = parse_turn(call("image_zoom_in_tool", {"bbox_2d": [1, 2, 30, 40], "label": "cat"}), ROTATE).tool_call
    assert zoom.args == ZoomArgs((1.0, 2.0, 30.0, 40.0), "cat") and zoom.bbox == (1.0, 2.0, 30.0, 40.0)
    assert zoom.label == "cat" and zoom.error is None
    turn = parse_turn(call("image_rotate_tool", {"angle": 270}), ROTATE)
    assert turn.errors == () and turn.tool_call.name == "image_rotate_tool"
    assert turn.tool_call.args == RotateArgs(270) and turn.tool_call.bbox is None and turn.tool_call.label is None


def test_a_disabled_tool_is_an_unknown_name_as_before():
    turn = parse_turn(call("image_rotate_tool", {"angle": 90}))  # rotate is off by default
    assert turn.tool_call.args is None and turn.tool_call.bbox is None
    # Read with the zoom schema, as any wrong name always was: both problems are reported.
    assert turn.errors == (
        "tool_call_schema: unknown tool name 'image_rotate_tool'; expected 'image_zoom_in_tool'",
        "tool_call_schema: unexpected argument(s) angle",
        'tool_call_schema: "arguments" has no "bbox_2d"',
    )
    assert turn.tool_call.error == turn.errors[0]
    unknown = parse_turn(call("crop", {"angle": 90}), ROTATE)
    assert unknown.errors[0] == (
        "tool_call_schema: unknown tool name 'crop'; expected 'image_zoom_in_tool' or 'image_rotate_tool'"
    )


@pytest.mark.parametrize(
    "arguments, error",
    [
        ({"angle": 45}, "tool_call_schema: angle must be 90, 180 or 270 (degrees counter-clockwise), got 45"),
        ({"angle": True}, "tool_call_schema: angle must be 90, 180 or 270 (degrees counter-clockwise), got True"),
        ({"angle": "90"}, "tool_call_schema: angle must be 90, 180 or 270 (degrees counter-clockwise), got '90'"),
        ({}, 'tool_call_schema: "arguments" has no "angle"'),
        ([90], 'tool_call_schema: "arguments" must be an object with "angle"'),
    ],
)
def test_bad_rotate_arguments_are_errors_the_model_reads(arguments, error):
    turn = parse_turn(call("image_rotate_tool", arguments), ROTATE)
    assert turn.tool_call.args is None and turn.tool_call.error == error
    result = run_tool(turn.tool_call, corner_image(), None, ToolConfig())
    assert result.image is None and result.error == error and not result.ok


def test_extra_arguments_are_flagged_but_the_rotation_runs():
    turn = parse_turn(call("image_rotate_tool", {"angle": 90.0, "label": "upright text", "speed": 2}), ROTATE)
    assert turn.errors == ("tool_call_schema: unexpected argument(s) speed",)
    assert turn.tool_call.args == RotateArgs(90) and turn.tool_call.label == "upright text"


# ----------------------------------------------------------------------------- run_tool


def test_run_tool_zoom_is_zoom_in():
    img = corner_image(448, 224)
    turn = parse_turn(call("image_zoom_in_tool", {"bbox_2d": [0, 0, 28, 28], "label": "red"}))
    result = run_tool(turn.tool_call, img, (224, 112), ToolConfig())
    direct = zoom_in(img, (0, 0, 28, 28), (224, 112), ToolConfig())
    assert result.tool == "image_zoom_in_tool" and result.ok
    assert result.box_view == direct.box_view == (0.0, 0.0, 28.0, 28.0)
    assert result.box_original == direct.box_original == (0.0, 0.0, 56.0, 56.0)  # 448 / 224 = 2
    assert result.image.tobytes() == direct.crop.tobytes()
    outside = parse_turn(call("image_zoom_in_tool", {"bbox_2d": [300, 300, 400, 400]})).tool_call
    assert "lies outside the image" in run_tool(outside, img, (224, 112), ToolConfig()).error


def test_run_tool_for_an_unreadable_call_says_why():
    turn = parse_turn("<tool_call>{oops</tool_call>")
    result = run_tool(turn.tool_call, corner_image(), None)
    assert result.tool == "" and result.image is None and result.error.startswith("tool_call_json: ")


@pytest.mark.parametrize("angle, corner", [(90, "bottom_left"), (180, "bottom_right"), (270, "top_right")])
def test_rotate_end_to_end(angle, corner):
    # 112x56 image; a 90 or 270 turn gives 56x112 = 6272 pixels, inside the default observation
    # budget [3136, 50176] with sides multiples of 28, so no resize: pixels are an exact transpose.
    img = corner_image()
    text = render_assistant_turn(think="the text is sideways", call=RotateArgs(angle), config=ROTATE)
    assert text.endswith(f'<tool_call>{{"name": "image_rotate_tool", "arguments": {{"angle": {angle}}}}}</tool_call>')
    turn = parse_turn(text, ROTATE)
    assert turn.errors == () and turn.action == "tool_call"
    result = run_tool(turn.tool_call, img, None, ToolConfig())
    assert result.ok and result.tool == "image_rotate_tool" and result.box_view is None and result.box_original is None
    w, h = result.image.size
    assert (w, h) == ((112, 56) if angle == 180 else (56, 112))
    where = {"bottom_left": (0, h - 1), "bottom_right": (w - 1, h - 1), "top_right": (w - 1, 0)}[corner]
    assert result.image.getpixel(where) == (255, 0, 0)  # the top-left block, turned counter-clockwise
    assert result.image.getpixel((0, 0)) == (128, 128, 128)


def test_rotate_resizes_to_the_observation_budget():
    img = Image.new("L", (1000, 500), 7)  # 500 000 pixels, over the default obs_max_pixels 50 176
    result = run_tool(parse_turn(call("image_rotate_tool", {"angle": 90}), ROTATE).tool_call, img, None, ToolConfig())
    assert result.image.mode == "RGB" and result.image.size == tools.crop_view_size((500, 1000), ToolConfig())
    assert result.image.size[0] * result.image.size[1] <= ToolConfig().obs_max_pixels


def test_render_call_refuses_a_tool_the_protocol_does_not_offer():
    with pytest.raises(ValueError, match="not offered"):
        render_call(RotateArgs(90))
    with pytest.raises(ValueError, match="either bbox"):
        render_assistant_turn(bbox=(1, 2, 3, 4), call=RotateArgs(90), config=ROTATE)


# ----------------------------------------------------------------------------- records and the report


def rotate_record() -> PredictionRecord:
    turns = [
        TurnRecord(
            text='<tool_call>{"name": "image_rotate_tool", "arguments": {"angle": 90, "label": "<b>x</b>"}}</tool_call>',
            tool_call=True, tool="image_rotate_tool", args=tools.args_json(RotateArgs(90)), label="<b>x</b>",
            valid=True, crop="crops/r_0.png", description="upright text", semantic_score=0.4,
        ),
        TurnRecord(text="<description>upright text</description><answer>A</answer>"),
    ]
    return PredictionRecord(
        id="r", source="synthetic", question="What does it say?", answer="A", prediction="A", correct=True,
        finish_reason="answer", options=["hi", "ho"], image="images/r.png", image_size=[112, 56],
        view_size=[112, 56], turns=turns,
    )


def test_a_rotate_record_round_trips_and_old_records_still_read():
    rec = rotate_record()
    again = PredictionRecord.from_json(rec.to_json())
    assert again == rec and again.turns[0].args == {"angle": 90} and again.tool_calls == 1 and again.invalid_calls == 0
    old = dataclasses.replace(rec, turns=[TurnRecord(text="<tool_call>...</tool_call>", tool_call=True, valid=True,
                                                     bbox_view=[1, 2, 3, 4], bbox_original=[2, 4, 6, 8])]).to_dict()
    del old["turns"][0]["tool"], old["turns"][0]["args"]  # a zoom-in record written before tool/args existed
    assert PredictionRecord.from_dict(old).turns[0].tool is None
    old["turns"][0]["bbox_original"] = None
    with pytest.raises(ValueError, match="needs bbox_original when it zooms in"):
        PredictionRecord.from_dict(old)
    bad = rec.to_dict()
    bad["turns"][0]["args"] = [90]
    with pytest.raises(ValueError, match=r"turns\[0\].args must be a mapping"):
        PredictionRecord.from_dict(bad)


def test_a_rotate_call_shows_in_the_report_escaped():
    html = render_card(rotate_record(), CardImages(thumb=None, crops=["assets/r_0.png", None]))
    assert '<span class="key">image_rotate_tool</span> {&quot;angle&quot;: 90}' in html
    assert 'class="err"' not in html  # a valid call that selects no region is not shown as rejected
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html  # the label only ever appears escaped
    assert '<img src="assets/r_0.png"' in html


def test_records_from_eval_carry_tool_and_args_for_zoom(tmp_path):
    from types import SimpleNamespace

    from mapo.eval import EvalConfig
    from mapo.eval.record import prediction_record  # the eval writes tool/args from the parsed turn

    text = call("image_zoom_in_tool", {"bbox_2d": [0, 0, 28, 28], "label": "red"})
    turns = [parse_turn(text), parse_turn("<description>red</description><answer>A</answer>")]
    img = corner_image()
    zoom = run_tool(turns[0].tool_call, img, (112, 56), ToolConfig())
    record = SimpleNamespace(raw_bbox=turns[0].tool_call.bbox, bbox_view=zoom.box_view, box_original=zoom.box_original,
                             label="red", valid=True, error=None)
    sample = SimpleNamespace(id="z", question="Q?", answer="A", options=["a", "b"], category="c", meta={"source": "synth"},
                             target_boxes=[], load_image=lambda: img)
    traj = SimpleNamespace(sample=sample, assistant_texts=[text, "<answer>A</answer>"], turns=turns, tool_calls=[record],
                           crops=[zoom.image], descriptions=["red"], finish_reason="answer", answer_text="A",
                           image_size=(112, 56), view_size=(112, 56))
    rec = prediction_record(traj, [None], tmp_path, "synth", EvalConfig())
    assert rec.turns[0].tool == "image_zoom_in_tool"
    assert rec.turns[0].args == {"bbox_2d": [0.0, 0.0, 28.0, 28.0], "label": "red"}
    assert rec.turns[0].bbox_original == [0.0, 0.0, 28.0, 28.0] and rec.turns[1].tool is None
    assert dataclasses.asdict(PredictionRecord.from_json(rec.to_json())) == dataclasses.asdict(rec)
