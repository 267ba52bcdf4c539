"""``mapo sft --data``: an eval's predictions.jsonl and an SFT parquet become the conversations SFT trains on."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mapo.agent import protocol
from mapo.agent.protocol import ProtocolConfig
from mapo.metrics.records import PredictionRecord, TurnRecord, append_jsonl
from mapo.train.sft_own import example_index, load_conversations, split, transcripts

ZOOM = protocol.render_assistant_turn(think="look", bbox=(0, 0, 56, 56), label="red square")
ANSWER = protocol.render_assistant_turn(description="a red square", answer="A")


def _eval_dir(root):
    """A predictions.jsonl as mapo eval writes it: 2 correct rows (one zooms), 1 wrong, 1 without its image."""
    (root / "images").mkdir(parents=True)
    (root / "crops").mkdir()
    Image.new("RGB", (448, 448), (200, 10, 10)).save(root / "images" / "a.jpg")
    Image.new("RGB", (56, 56), (10, 200, 10)).save(root / "crops" / "a_0.png")
    zoom = TurnRecord(text=ZOOM, tool_call=True, valid=True, bbox_view=[0, 0, 56, 56], bbox_original=[0, 0, 112, 112],
                      crop="crops/a_0.png")
    rows = [
        PredictionRecord(id="zooms", source="vstar", question="What colour?", answer="A", prediction="A", correct=True,
                         finish_reason="answer", options=["red", "blue"], image="images/a.jpg", image_size=[448, 448],
                         view_size=[224, 224], turns=[zoom, TurnRecord(text=ANSWER)]),
        PredictionRecord(id="direct", source="vstar", question="What colour?", answer="A", prediction="A", correct=True,
                         finish_reason="answer", options=["red", "blue"], image="images/a.jpg", image_size=[448, 448],
                         view_size=[224, 224], turns=[TurnRecord(text=ANSWER)]),
        PredictionRecord(id="wrong", source="vstar", question="What colour?", answer="B", prediction="A", correct=False,
                         finish_reason="answer", options=["red", "blue"], image="images/a.jpg", image_size=[448, 448],
                         view_size=[224, 224], turns=[TurnRecord(text=ANSWER)]),
        PredictionRecord(id="lost", source="vstar", question="What colour?", answer="A", prediction="A", correct=True,
                         finish_reason="answer", image="images/missing.jpg", turns=[TurnRecord(text=ANSWER)]),
    ]
    for row in rows:
        append_jsonl(root / "predictions.jsonl", row)
    return root / "predictions.jsonl"


def _png(color, size=(112, 112)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_predictions_become_the_conversations_the_agent_had(tmp_path, capsys):
    path = _eval_dir(tmp_path / "eval")
    config = ProtocolConfig()
    rows = load_conversations(path, config)
    assert "skipped 2 of 4 rows" in capsys.readouterr().err  # the wrong one and the one without its image
    assert [c.id for c in rows] == ["zooms", "direct"]
    zooms = rows[0]
    roles = [m["role"] for m in zooms.messages]
    assert roles == ["system", "user", "assistant", config.observation_role, "assistant"]
    assert zooms.messages[0]["content"][0]["text"] == protocol.system_prompt(config)
    assert zooms.messages[2]["content"][0]["text"] == ZOOM and zooms.messages[4]["content"][0]["text"] == ANSWER
    assert [im.size for im in zooms.images] == [(224, 224), (56, 56)]  # the view the model saw, then the crop
    assert len(load_conversations(tmp_path / "eval", config, only_correct=False)) == 3  # a directory works too


def test_sft_parquet_rows_and_bad_rows(tmp_path, capsys):
    good = [{"role": "system", "content": "Zoom if you need to."},
            {"role": "user", "content": "<image>What colour is the square?"},
            {"role": "assistant", "content": ZOOM},
            {"role": "tool", "content": "<tool_response><image></tool_response>"},
            {"role": "assistant", "content": ANSWER}]
    table = pa.table({
        "messages": [good, good[:2], good],
        "images": [[{"bytes": _png((200, 0, 0))}, {"bytes": _png((0, 200, 0), (56, 56))}],
                   [{"bytes": _png((200, 0, 0))}],
                   [{"bytes": _png((200, 0, 0))}]],  # 2 <image> marks, 1 image
    })
    pq.write_table(table, tmp_path / "sft.parquet")
    rows = load_conversations(tmp_path / "sft.parquet", ProtocolConfig())
    err = capsys.readouterr().err
    assert "skipped 2 of 3 rows" in err and "no assistant message" in err and "<image> marks" in err
    (row,) = rows
    assert [m["role"] for m in row.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert row.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]
    assert [im.size for im in row.images] == [(112, 112), (56, 56)]
    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "rl.parquet")
    with pytest.raises(ValueError, match="needs the columns messages and images"):
        load_conversations(tmp_path / "rl.parquet", ProtocolConfig())
    with pytest.raises(ValueError, match="not a file"):
        load_conversations(tmp_path / "nothing.jsonl", ProtocolConfig())


def test_split_and_order_are_pure_functions_of_the_cursor():
    train, held = split(list(range(10)), n_heldout=32)
    assert held == [8, 9] and train == list(range(8))  # at most a quarter is held out
    first = [example_index(c, 5, seed=3) for c in range(10)]
    assert sorted(first[:5]) == sorted(first[5:]) == list(range(5))  # each epoch is a permutation
    assert first == [example_index(c, 5, seed=3) for c in range(10)]


def test_mapo_sft_data_trains_on_the_assistant_turns_of_an_eval(tiny_policy_dir, tmp_path, capsys):
    from mapo.cli import main
    from mapo.policy import load_policy
    from mapo.train.sft_data import collate

    path = _eval_dir(tmp_path / "eval")
    policy = load_policy(tiny_policy_dir)
    (text,) = [t.text for t in transcripts(load_conversations(path, ProtocolConfig())[:1], policy.processor)]
    assert ZOOM in text and ANSWER in text
    conversations = load_conversations(path, ProtocolConfig())
    _, labels = collate(transcripts(conversations, policy.processor), policy, max_length=4096)
    labelled = policy.tokenizer.decode(labels[0][labels[0] >= 0])
    assert ZOOM in labelled and ANSWER in labelled and "What colour?" not in labelled  # assistant turns only

    run = tmp_path / "sft"
    rc = main(["sft", "--data", str(path), "--out", str(run), "--no-progress", f"policy.init_from={tiny_policy_dir}",
               "steps=2", "batch_size=2", "save_every=1", "log_every=1", "tensorboard=false", "eval.n_rollout=0"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (run / "final" / "model.safetensors").is_file()


def test_lora_sft_on_own_data_saves_an_adapter_and_resumes(tiny_policy_dir, tmp_path):
    from mapo.core.config import from_dict
    from mapo.train.sft import SFTConfig, run_sft

    path = _eval_dir(tmp_path / "eval")
    raw = dict(steps=2, batch_size=2, save_every=1, log_every=1, tensorboard=False, progress=False,
               policy=dict(init_from=str(tiny_policy_dir)), data=dict(source=str(path)), eval=dict(n_rollout=0),
               finetune=dict(method="lora", lora_r=4, lora_alpha=8, gradient_checkpointing=True))
    run_sft(from_dict(SFTConfig, raw), tmp_path / "sft", stop_after=1)
    assert (tmp_path / "sft" / "checkpoints" / "step_000001" / "model" / "adapter_model.safetensors").is_file()
    run_sft(from_dict(SFTConfig, raw), tmp_path / "sft", resume=True)
    assert (tmp_path / "sft" / "final" / "adapter_config.json").is_file()
    with pytest.raises(ValueError, match="needs policy.init_from"):
        from_dict(SFTConfig, {**raw, "policy": {}})
