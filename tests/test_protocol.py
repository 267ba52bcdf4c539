from __future__ import annotations

import dataclasses
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapo.agent.protocol import (
    ERROR_CODES,
    ProtocolConfig,
    initial_messages,
    observation_message,
    option_letters,
    parse_turn,
    render_assistant_turn,
    render_tool_call,
    system_prompt,
    user_prompt,
)

TOOL = "image_zoom_in_tool"


def call(arguments, name=TOOL) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def codes(text: str, config: ProtocolConfig = ProtocolConfig()) -> tuple[str, ...]:
    return parse_turn(text, config).error_codes


# ----------------------------------------------------------------------------- well-formed turns


def test_well_formed_tool_call_turn():
    text = (
        "<description>a red square</description>\n<think>look left</think>\n"
        '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20.5, 30, 40], "label": "sign"}}</tool_call>'
    )
    turn = parse_turn(text)
    assert turn.errors == ()
    assert turn.action == "tool_call"
    assert turn.description == "a red square" and turn.think == "look left" and turn.answer is None
    assert turn.tool_call.name == TOOL
    assert turn.tool_call.bbox == (10.0, 20.5, 30.0, 40.0)
    assert turn.tool_call.label == "sign"


def test_answer_turn_and_whitespace_and_junk_are_tolerated():
    turn = parse_turn("Sure! \n <think>\n it is B \n</think>  <answer>  B </answer> thanks")
    assert turn.errors == () and turn.action == "answer" and turn.answer == "B" and turn.think == "it is B"


def test_label_is_optional_and_arguments_may_be_a_json_string():
    assert parse_turn(call({"bbox_2d": [1, 2, 3, 4]})).tool_call.label is None
    text = '<tool_call>{"name": "image_zoom_in_tool", "arguments": "{\\"bbox_2d\\": [1, 2, 3, 4]}"}</tool_call>'
    turn = parse_turn(text)
    assert turn.errors == () and turn.tool_call.bbox == (1.0, 2.0, 3.0, 4.0)


def test_code_fences_and_junk_inside_tool_call():
    fenced = '<tool_call>\n```json\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n```\n</tool_call>'
    junk = '<tool_call>call: {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}} done</tool_call>'
    for text in (fenced, junk):
        turn = parse_turn(text)
        assert turn.errors == (), text
        assert turn.tool_call.bbox == (1.0, 2.0, 3.0, 4.0)


def test_negative_and_out_of_image_numbers_are_kept_for_the_tool_to_clamp():
    turn = parse_turn(call({"bbox_2d": [-10, -2.5, 5000, 40]}))
    assert turn.errors == () and turn.tool_call.bbox == (-10.0, -2.5, 5000.0, 40.0)


def test_unicode_in_blocks_and_label():
    turn = parse_turn("<description>红色的标志 🚦</description>" + call({"bbox_2d": [1, 2, 3, 4], "label": "标志 ✓"}))
    assert turn.errors == () and turn.description == "红色的标志 🚦" and turn.tool_call.label == "标志 ✓"


def test_custom_tag_names():
    config = ProtocolConfig(think_tag="reason", tool_call_tag="call", answer_tag="ans", description_tag="see")
    text = render_assistant_turn(description="x", think="y", bbox=(1, 2, 3, 4), config=config)
    assert "<call>" in text and "<tool_call>" not in text
    turn = parse_turn(text, config)
    assert turn.errors == () and turn.description == "x" and turn.think == "y" and turn.tool_call.bbox == (1, 2, 3, 4)
    # Default tags mean nothing under the custom config.
    assert parse_turn("<answer>B</answer>", config).action == "none"


# ----------------------------------------------------------------------------- malformed turns, one class each


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}',  # missing brace
        "{'name': 'image_zoom_in_tool', 'arguments': {'bbox_2d': [1, 2, 3, 4]}}",  # Python literal, not JSON
        "zoom to 1,2,3,4",  # no object
        '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4],}}',  # trailing comma
        "[1, 2, 3, 4]",  # not an object
        "",
    ],
)
def test_malformed_json_gives_tool_call_json_error(body):
    turn = parse_turn(f"<tool_call>{body}</tool_call>")
    assert turn.action == "tool_call"  # the attempt is kept so the rollout answers with an error observation
    assert turn.tool_call.bbox is None and turn.tool_call.raw == body
    assert "tool_call_json" in turn.error_codes


@pytest.mark.parametrize(
    "bbox",
    [
        [1, 2, 3],  # wrong arity
        [1, 2, 3, 4, 5],
        "1, 2, 3, 4",  # wrong type
        {"x1": 1},
        [1, 2, "3", 4],
        [1, 2, None, 4],
        [True, 2, 3, 4],  # bools are not numbers here
        [[1, 2], [3, 4]],
        [1, 2, 1e7, 4],  # huge
        [1, 2, -2e6, 4],
    ],
)
def test_bad_bbox_gives_schema_error(bbox):
    turn = parse_turn(call({"bbox_2d": bbox}))
    assert turn.tool_call.bbox is None
    assert turn.error_codes == ("tool_call_schema",)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_non_finite_and_overflowing_numbers_are_rejected(literal):
    turn = parse_turn('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, %s, 4]}}</tool_call>' % literal)
    assert turn.tool_call.bbox is None
    assert set(turn.error_codes) <= {"tool_call_schema", "tool_call_json"} and turn.error_codes


def test_schema_errors_name_arguments_label_extra_keys():
    wrong_name = parse_turn(call({"bbox_2d": [1, 2, 3, 4]}, name="crop"))
    assert wrong_name.tool_call.name == "crop" and wrong_name.tool_call.bbox is None  # unknown tools are not run
    assert wrong_name.error_codes == ("tool_call_schema",) and "image_zoom_in_tool" in wrong_name.errors[0]

    no_args = parse_turn('<tool_call>{"name": "image_zoom_in_tool"}</tool_call>')
    assert no_args.error_codes == ("tool_call_schema",) and no_args.tool_call.bbox is None

    no_bbox = parse_turn(call({"label": "x"}))
    assert no_bbox.error_codes == ("tool_call_schema",) and "bbox_2d" in no_bbox.errors[0]

    bad_label = parse_turn(call({"bbox_2d": [1, 2, 3, 4], "label": 7}))
    assert bad_label.error_codes == ("tool_call_schema",)
    assert bad_label.tool_call.bbox == (1, 2, 3, 4) and bad_label.tool_call.label is None

    extra = parse_turn(call({"bbox_2d": [1, 2, 3, 4], "zoom": 2}))
    assert extra.error_codes == ("tool_call_schema",) and "zoom" in extra.errors[0]
    assert extra.tool_call.bbox == (1, 2, 3, 4)


def test_multiple_tool_calls_take_the_first():
    turn = parse_turn(call({"bbox_2d": [1, 2, 3, 4]}) + call({"bbox_2d": [5, 6, 7, 8]}))
    assert turn.tool_call.bbox == (1, 2, 3, 4)
    assert turn.error_codes == ("multiple_blocks",)


def test_answer_and_tool_call_keeps_both_and_answer_wins():
    turn = parse_turn(call({"bbox_2d": [1, 2, 3, 4]}) + "<answer>C</answer>")
    assert turn.tool_call.bbox == (1, 2, 3, 4) and turn.answer == "C"
    assert turn.action == "answer"
    assert turn.error_codes == ("answer_and_tool_call",)


def test_no_action():
    assert codes("I think it is B.") == ("no_action",)
    assert codes("<think>hmm</think>") == ("no_action",)
    assert parse_turn("").action == "none"


def test_unclosed_tags_extract_best_effort():
    turn = parse_turn("<think>reasoning <answer>B")
    assert turn.think == "reasoning" and turn.answer == "B"
    assert set(turn.error_codes) == {"nested_tag", "unclosed_tag"}
    unclosed_call = parse_turn('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}')
    assert unclosed_call.tool_call.bbox == (1, 2, 3, 4) and unclosed_call.error_codes == ("unclosed_tag",)


def test_nested_and_stray_tags():
    nested = parse_turn("<think>a <answer>B</answer> c</think>")
    assert nested.answer == "B" and nested.think == "a"
    assert set(nested.error_codes) == {"nested_tag", "stray_closing_tag"}
    assert codes("</think><answer>A</answer>") == ("stray_closing_tag",)
    mismatched = parse_turn("<think>a</answer>")
    assert mismatched.think == "a" and "nested_tag" in mismatched.error_codes


def test_missing_tags():
    assert parse_turn("B</answer>").error_codes == ("stray_closing_tag", "no_action")
    empty = parse_turn("<description></description><answer> </answer>")
    assert empty.description is None and empty.answer is None
    assert empty.error_codes.count("empty_block") == 2 and "no_action" in empty.error_codes


def test_description_rules():
    config = ProtocolConfig(max_description_chars=10)
    long_ = parse_turn("<description>" + "x" * 11 + "</description><answer>A</answer>", config)
    assert long_.description == "x" * 11  # kept: the verifier decides the penalty
    assert long_.error_codes == ("description_too_long",)
    assert codes("<description>" + "x" * 10 + "</description><answer>A</answer>", config) == ()
    late = parse_turn("<think>t</think><description>d</description><answer>A</answer>")
    assert late.description == "d" and late.error_codes == ("description_not_first",)
    assert codes("so: <description>d</description><answer>A</answer>") == ("description_not_first",)


def test_every_error_entry_has_a_known_code_and_a_sentence():
    texts = [
        "x", "<think>", "</think>", "<think><think>", call({"bbox_2d": [1]}), "<tool_call>{</tool_call>",
        "<description></description>", call({"bbox_2d": [1, 2, 3, 4]}) * 2 + "<answer>A</answer>",
    ]  # fmt: skip
    for text in texts:
        for error in parse_turn(text).errors:
            code, _, sentence = error.partition(": ")
            assert code in ERROR_CODES and len(sentence) > 5, error


def test_error_list_is_capped():
    turn = parse_turn("</think>" * 100)
    assert len(turn.errors) == 16 and turn.error_codes[-1] == "too_many_errors"
    assert "86 more" in turn.errors[-1]  # 100 stray tags + no_action = 101 errors; 15 kept, 101 - 15 = 86 dropped


def test_non_string_input_does_not_raise():
    assert parse_turn(None).action == "none"  # type: ignore[arg-type]
    assert parse_turn(b"<answer>A</answer>").error_codes == ("no_action",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "garbage",
    [
        "<" * 1_000_000,
        "<think>" * 150_000,
        "</tool_call>" * 100_000,
        "<tool_call>" + "[" * 1_000_000 + "</tool_call>",
        "<tool_call>" + "{" * 1_000_000 + "</tool_call>",
        "<tool_call>" + '{"a": ' * 200_000 + "</tool_call>",
        "<thin" * 200_000,
        "<tool_call>{" + "1" * 1_000_000 + "}</tool_call>",
    ],
    ids=["lt", "think", "close", "brackets", "braces", "nested-objects", "partial-tags", "digits"],
)
def test_one_megabyte_of_garbage_is_fast(garbage):
    start = time.perf_counter()
    turn = parse_turn(garbage)
    elapsed = time.perf_counter() - start
    assert 0 < len(turn.errors) <= 16  # capped: garbage must not produce a huge error list
    assert elapsed < 1.0, f"parse took {elapsed:.2f} s on {len(garbage)} characters"


# ----------------------------------------------------------------------------- rendering and prompts


def test_render_tool_call_exact_text():
    assert render_tool_call((10, 20.5, 30.0, 40), "a sign") == (
        '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20.5, 30, 40], "label": "a sign"}}</tool_call>'
    )
    assert render_tool_call([1, 2, 3, 4]) == '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>'


def test_label_with_tag_text_survives_the_round_trip():
    text = render_tool_call((1, 2, 3, 4), label="</tool_call><answer>A</answer>")
    turn = parse_turn(text)
    assert turn.errors == () and turn.tool_call.label == "</tool_call><answer>A</answer>"


def test_render_accepts_numpy_numbers():
    import numpy as np

    assert '"bbox_2d": [1, 2.5, 3, 4]' in render_tool_call((np.int64(1), np.float32(2.5), np.float64(3.0), 4))


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bbox"):
        render_tool_call((1, 2, 3))
    with pytest.raises(ValueError, match="finite"):
        render_tool_call((1, 2, float("nan"), 4))
    with pytest.raises(ValueError, match="label"):
        render_tool_call((1, 2, 3, 4), label=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        render_assistant_turn(bbox=(1, 2, 3, 4), answer="A")
    with pytest.raises(ValueError, match="label"):
        render_assistant_turn(label="x", answer="A")


def test_render_order_is_description_think_action():
    text = render_assistant_turn(think="t", description="d", answer="A")
    assert text == "<description>d</description>\n<think>t</think>\n<answer>A</answer>"


def test_prompts_and_messages():
    prompt = system_prompt()
    for needle in ("image_zoom_in_tool", "bbox_2d", "<think>", "<tool_call>", "<answer>", "<description>", "300"):
        assert needle in prompt
    custom = ProtocolConfig(description_tag="see", tool_name="zoom", max_description_chars=50)
    assert "<see>" in system_prompt(custom) and '"zoom"' in system_prompt(custom) and "50 characters" in system_prompt(custom)

    assert user_prompt("What colour?", ["red", "blue"]).splitlines()[:3] == ["What colour?", "(A) red", "(B) blue"]
    messages = initial_messages("Q?", ["x", "y"])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": prompt}]
    assert messages[1]["content"][0] == {"type": "image"} and "(B) y" in messages[1]["content"][1]["text"]
    assert option_letters(4) == ["A", "B", "C", "D"] and option_letters(0) == []
    with pytest.raises(ValueError, match="n must be"):
        option_letters(27)
    with pytest.raises(ValueError, match="options"):
        user_prompt("Q", "AB")  # type: ignore[arg-type]


def test_observation_messages():
    obs = observation_message()
    assert obs["role"] == "user"
    assert obs["content"][0] == {"type": "text", "text": "<tool_response>"}
    assert obs["content"][1] == {"type": "image"}
    assert obs["content"][2]["text"].startswith("</tool_response>\n") and "<description>" in obs["content"][2]["text"]
    err = observation_message(ProtocolConfig(observation_role="tool"), error="box outside")
    assert err == {"role": "tool", "content": [{"type": "text", "text": "<tool_response>Error: box outside</tool_response>"}]}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"observation_role": "assistant"}, "observation_role"),
        ({"think_tag": "a b"}, "think_tag"),
        ({"answer_tag": ""}, "answer_tag"),
        ({"answer_tag": "think"}, "distinct"),
        ({"tool_name": ""}, "tool_name"),
        ({"max_description_chars": 0}, "max_description_chars"),
        ({"system_template": "use $unknown"}, "system_template"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProtocolConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ProtocolConfig().think_tag = "x"  # type: ignore[misc]


# ----------------------------------------------------------------------------- properties

FRAGMENTS = [
    "<think>", "</think>", "<description>", "</description>", "<tool_call>", "</tool_call>", "<answer>",
    "</answer>", "<", ">", "/", '{"name": "image_zoom_in_tool"', '"arguments": {', '"bbox_2d": [', "]", "}", "{",
    ", ", "1", "-3.5", "NaN", "Infinity", "1e999", '"label": "x"', '"', "\\", "```json\n", "```", "\n", " ", "A",
    "null", "true", "[", ":", "\x00", "é",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    turn = parse_turn(text)
    assert turn.action in ("tool_call", "answer", "none")
    assert all(code in ERROR_CODES for code in turn.error_codes)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=40).map("".join))
def test_parse_never_raises_on_tag_and_json_fragments(text):
    turn = parse_turn(text)
    assert all(code in ERROR_CODES for code in turn.error_codes)
    if turn.tool_call is not None and turn.tool_call.bbox is not None:
        assert len(turn.tool_call.bbox) == 4 and all(abs(v) <= 1e6 for v in turn.tool_call.bbox)


# Block texts: anything that is not a tag of the grammar and has no surrounding whitespace (the parser strips).
block_text = st.text(min_size=1, max_size=40).map(str.strip).filter(lambda s: s and "<" not in s)
coordinate = st.one_of(
    st.integers(-10_000, 10_000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=300, deadline=None)
@given(
    think=st.none() | block_text,
    description=st.none() | st.text(min_size=1, max_size=300).map(str.strip).filter(lambda s: s and "<" not in s),
    bbox=st.none() | st.tuples(coordinate, coordinate, coordinate, coordinate),
    label=st.none() | st.text(max_size=30),
    answer=block_text,
)
def test_render_then_parse_round_trips(think, description, bbox, label, answer):
    if bbox is None:
        text = render_assistant_turn(think=think, description=description, answer=answer)
    else:
        text = render_assistant_turn(think=think, description=description, bbox=bbox, label=label)
    turn = parse_turn(text)
    assert turn.errors == (), turn.errors
    assert turn.think == think and turn.description == description
    if bbox is None:
        assert turn.action == "answer" and turn.answer == answer and turn.tool_call is None
    else:
        assert turn.action == "tool_call" and turn.answer is None
        assert turn.tool_call.bbox == tuple(float(v) for v in bbox)
        assert turn.tool_call.label == label


# ----------------------------------------------------------------------------- which protocol a policy gets


def test_protocol_for_policy_prefers_the_record_over_defaults_and_explicit_config_over_the_record():
    from mapo.agent.protocol import protocol_for_policy

    default = ProtocolConfig()
    trained = ProtocolConfig(system_template="Zoom with $tool_name.")
    explicit = ProtocolConfig(answer_instruction="Answer with a letter.")
    notes: list[str] = []
    assert protocol_for_policy(default, None, on_conflict=notes.append) is default  # no record: as configured
    assert protocol_for_policy(default, trained, on_conflict=notes.append) is trained  # defaults: the record
    assert protocol_for_policy(trained, trained, on_conflict=notes.append) is trained and not notes
    assert protocol_for_policy(explicit, trained, on_conflict=notes.append) is explicit  # explicit: kept, noted
    assert len(notes) == 1 and "answer_instruction" in notes[0] and "system_template" in notes[0]
