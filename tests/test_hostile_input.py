"""Hostile input, case by case: nothing silently wrong, nothing deleted that mapo did not write, one line
(never a traceback) for every bad file, setting or directory.

Each parametrised case is one attack a user (or a damaged download) can mount. The eval cases run the
tiny saved policy on two or three synthetic samples; the model cases alter a copy of it.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mapo.cli import main
from mapo.data import synth
from mapo.data.benchmarks import write_samples
from mapo.core.errors import ConfigError, DataError, MapoError, ModelError

LEVEL = synth.level_config("easy")
SETTINGS = ["tool_from_data=false", "rollout.max_turns=1", "rollout.max_new_tokens_per_turn=2"]


def _one_line(capsys, command: str = "eval") -> str:
    """The error line a command printed; fails on a traceback or a multi-line message."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"mapo {command}:")]
    assert lines, err
    return lines[-1]


def _eval(model: Path, data: str, out: Path, *extra: str) -> int:
    return main(["eval", "--data", data, "--model", str(model), "--out", str(out), "--no-progress", *extra, *SETTINGS])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_policy_dir):
    return tiny_policy_dir


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


def _hrbench(path: Path, n: int = 2, seed: int = 5) -> Path:
    write_samples(synth.generate(n, seed=seed, config=LEVEL), path, ["hrbench"])
    return next((path / "hrbench").glob("*.tsv"))


# ============================================================================ 1. silently wrong results


@pytest.mark.parametrize("change", ["one_interior_weight", "negate_interior"])
def test_a_changed_weight_is_a_different_model(model_dir, tmp_path, capsys, change):
    model = _copy(model_dir, tmp_path)
    out = tmp_path / "e"
    assert _eval(model, "synth:2:easy:7", out) == 0
    weights = load_file(str(model / "model.safetensors"))
    name = max(weights, key=lambda k: weights[k].numel())
    flat = weights[name].reshape(-1)
    middle = slice(64, flat.numel() - 64)  # the first and last 32 values stay as they were
    if change == "one_interior_weight":
        flat[flat.numel() // 2] += 1.0
    else:
        flat[middle] = -flat[middle]
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert _eval(model, "synth:2:easy:7", out) == 2
    line = _one_line(capsys)
    assert "different model" in line and "--overwrite" in line


def test_the_weight_files_hash_is_cached_and_still_sees_a_change(model_dir, tmp_path, monkeypatch):
    from mapo.core import fingerprint
    from mapo.eval.outdir import _module_fingerprint
    from mapo.policy import load_policy

    model = _copy(model_dir, tmp_path)
    first = _module_fingerprint(load_policy(model).model)
    monkeypatch.setattr(fingerprint, "_sha256_file", lambda path: pytest.fail(f"{path} was read again"))
    assert _module_fingerprint(load_policy(model).model) == first  # from the cache: size, mtime, inode unchanged
    monkeypatch.undo()
    weights = load_file(str(model / "model.safetensors"))
    name = max(weights, key=lambda k: weights[k].numel())
    weights[name].view(-1)[weights[name].numel() // 2] += 1.0
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    policy = load_policy(model)
    assert _module_fingerprint(policy.model) != first
    policy.model.get_input_embeddings().weight.data[0, 0] += 1.0  # trained in memory after loading
    assert _module_fingerprint(policy.model) != _module_fingerprint(load_policy(model).model)


def test_a_question_changed_mid_file_is_different_data(model_dir, tmp_path, capsys):
    tsv = _hrbench(tmp_path / "data", n=3)
    out = tmp_path / "e"
    assert _eval(model_dir, str(tsv), out, "benchmark=hrbench") == 0
    text = tsv.read_text()
    rows = text.split("\n")
    i = 2  # the second record: neither in the first nor in the last 64 KiB once images pad the file
    rows[i] = rows[i].replace("What", "Whot", 1)
    assert len("\n".join(rows)) == len(text) and "\n".join(rows) != text
    tsv.write_text("\n".join(rows))
    assert _eval(model_dir, str(tsv), out, "benchmark=hrbench") == 2
    assert "different data" in _one_line(capsys)


def test_an_mme_image_replaced_under_its_name_is_different_data(tmp_path):
    from mapo.eval import data_fingerprint

    write_samples(synth.generate(2, seed=5, config=LEVEL), tmp_path / "d", ["mme"])
    source = next((tmp_path / "d" / "mme").glob("*.json"))
    before = data_fingerprint(str(source))
    image = next(p for p in source.parent.rglob("*") if p.suffix in (".png", ".jpg"))
    Image.new("RGB", Image.open(image).size, "white").save(image)
    assert data_fingerprint(str(source)) != before


@pytest.mark.parametrize("damage", ["drop_a_tensor", "more_vision_blocks", "larger_vocabulary"])
def test_weights_that_do_not_match_the_config_are_refused_by_name(model_dir, tmp_path, capsys, damage):
    from mapo.policy import load_policy

    model = _copy(model_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    if damage == "drop_a_tensor":
        weights = load_file(str(model / "model.safetensors"))
        weights.pop("model.layers.0.mlp.gate_proj.weight")
        save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
        expected = "lacks 1 tensor(s) the config asks for (model.language_model.layers.0.mlp.gate_proj.weight)"
    elif damage == "more_vision_blocks":
        config["vision_config"]["depth"] += 2
        expected = "lacks"
    else:
        config["text_config"]["vocab_size"] += 8  # the embedding in the weights is 8 rows short
        expected = "wrong shape"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match its config.json") as e:
        load_policy(model)
    assert expected in str(e.value)
    assert _eval(model, "synth:1", tmp_path / "e") == 2
    assert "do not match its config.json" in _one_line(capsys)
    assert not (tmp_path / "e").exists()
    if damage == "drop_a_tensor":  # research may still ask for a partial load
        assert load_policy(model, allow_partial=True) is not None


def test_two_hrbench_rows_with_one_index_are_not_scored_as_one(tmp_path):
    from mapo.eval import load_eval_samples

    tsv = _hrbench(tmp_path / "d", n=3)
    rows = list(csv.DictReader(tsv.open(newline=""), delimiter="\t"))
    rows[2]["index"] = rows[0]["index"]
    for r in rows:
        r.pop("mapo", None)  # the extra field would give each row its own id
    with tsv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0]], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    samples, report = load_eval_samples(str(tsv))
    assert len(samples) == len({s.id for s in samples}) == 2
    (row,) = report["skipped_rows"]
    assert row["row"] == 4 and "duplicate id" in row["reason"] and "first at row 2" in row["reason"]


@pytest.mark.parametrize("override", ["optim.lr=1e999", "optim.lr=.nan", "optim.grad_clip=.nan", "optim.eps=-.inf",
                                      "loss.kl_coef=.inf"])
def test_non_finite_numbers_are_refused(override):
    from mapo.core.config import load_config
    from mapo.train.rl import RLConfig

    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(RLConfig, None, ["policy=default", override])


# ============================================================================ 2. nothing deleted that mapo did not write


def test_overwrite_removes_only_what_the_evaluation_wrote(model_dir, tmp_path):
    out = tmp_path / "e"
    assert _eval(model_dir, "synth:2:easy:7", out) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(name.startswith("images/") for name in written)
    mine = [out / "images" / "my_holiday_photo.png", out / "notes.txt", out / "crops" / "keep.txt"]
    for p in mine:
        p.parent.mkdir(exist_ok=True)
        p.write_text("mine")
    assert _eval(model_dir, "synth:2:easy:8", out, "--overwrite") == 0
    assert all(p.read_text() == "mine" for p in mine)
    manifest = (out / "outputs.txt").read_text().split()
    assert all(name.startswith(("images/", "crops/")) for name in manifest) and "images/my_holiday_photo.png" not in manifest


def test_overwrite_of_an_old_directory_without_manifest_uses_the_records(model_dir, tmp_path):
    from mapo.eval import written_outputs

    out = tmp_path / "e"
    assert _eval(model_dir, "synth:2:easy:7", out) == 0
    (out / "outputs.txt").unlink()  # as written before eval directories had a manifest
    (out / "images" / "mine.png").write_text("mine")
    names = {p.relative_to(out).as_posix() for p in written_outputs(out)}
    assert "images/mine.png" not in names and sum(n.startswith("images/") for n in names) == 2


@pytest.mark.parametrize("where", ["mme_folder", "vstar_folder", "inside_vstar_folder", "holding_the_data"])
def test_out_in_a_dataset_is_refused_and_the_dataset_untouched(model_dir, tmp_path, capsys, where):
    fmt = "mme" if where == "mme_folder" else "vstar"
    write_samples(synth.generate(2, seed=5, config=LEVEL), tmp_path / "d", [fmt])
    folder = tmp_path / "d" / fmt
    before = sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())
    out = {"inside_vstar_folder": folder / "results", "holding_the_data": tmp_path / "d"}.get(where, folder)
    source = next(folder.glob("*.json")) if fmt == "mme" else folder
    for extra in ([], ["--overwrite"]):
        assert _eval(model_dir, str(source), out, *extra) == 2
        assert "never writes into a dataset" in _one_line(capsys)
    assert sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == before


def test_out_beside_a_data_file_in_another_folder_is_fine(model_dir, tmp_path, monkeypatch):
    tsv = _hrbench(tmp_path / "d", n=1)
    assert _eval(model_dir, str(tsv), tsv.parent / "results", "benchmark=hrbench") == 0  # a sub-folder of a file's


def test_out_with_foreign_files_is_refused_even_with_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "photos"
    (out / "images").mkdir(parents=True)
    (out / "images" / "a.png").write_text("mine")
    assert _eval(model_dir, "synth:1", out, "--overwrite") == 2
    assert "holds files that mapo did not write (images)" in _one_line(capsys)
    assert (out / "images" / "a.png").read_text() == "mine"


def test_a_second_eval_on_one_out_is_refused(model_dir, tmp_path, capsys):
    from mapo.core.run_dir import RunDirLock

    out = tmp_path / "e"
    out.mkdir()
    with RunDirLock(out, what="eval directory"):
        assert _eval(model_dir, "synth:2", out) == 2
        assert f"eval directory {out} is in use by process {os.getpid()}" in _one_line(capsys)
    assert not (out / "predictions.jsonl").exists()


@pytest.mark.parametrize("who", ["eval", "train"])
def test_a_lock_that_is_a_symlink_is_refused_and_never_written_through(model_dir, tmp_path, capsys, who):
    from mapo.core.run_dir import RunDirLock

    target = tmp_path / "precious.txt"
    target.write_text("precious")
    out = tmp_path / "dir"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    if who == "eval":
        assert _eval(model_dir, "synth:1", out) == 2
        assert "is a symbolic link" in _one_line(capsys)
    else:
        with pytest.raises(DataError, match="is a symbolic link"):
            RunDirLock(out).acquire()
    assert target.read_text() == "precious"


# ============================================================================ 3. resources and trust


BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
BAD_CONFIGS = {
    "invalid_yaml": ("rollout: [1,\n", "is not a valid config"),
    "python_tag": ("x: !!python/object/apply:os.system ['touch /tmp/mapo-pwned']\n", "could not determine a constructor"),
    "billion_laughs": (BOMB, "expands to more than"),
    "self_reference": ("a: &a [*a]\n", "refers to itself"),
    "deep_nesting": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than"),
    "duplicate_key": ("limit_pixels: 1\nbenchmark: vstar\nbenchmark: mme\n", "given twice (lines 2 and 3)"),
    "not_a_mapping": ("- 1\n- 2\n", "must hold a mapping"),
    "not_utf8": (b"benchmark: \xff\xfe\n", "cannot read config file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_hostile_config_file_is_one_line_and_quick(tmp_path, capsys, case):
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["eval", "--config", str(path), "--show-config"]) == 2
    assert expected in _one_line(capsys)
    if case != "not_a_mapping" and isinstance(text, str):  # refused before any memory is spent: well under 1 s idle
        from mapo.core.config import load_yaml

        started = time.perf_counter()
        with pytest.raises(ConfigError):
            load_yaml(text, "c.yaml")
        assert time.perf_counter() - started < 10


BAD_OVERRIDES = {
    "python_tag": ("benchmark=!!python/object/apply:os.system [ls]", "could not determine a constructor"),
    "deep_nesting": ("scoring=" + "[" * 100_000 + "]" * 100_000, "nested more than"),
    "self_reference": ("scoring=&a [*a]", "refers to itself"),
    "invalid_yaml": ("scoring=[1,", "is not a valid config"),
    "bomb_in_flow": ("scoring=" + "{a: &a [1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)) + "}",
        "expands to more than"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_a_hostile_override_is_one_line(capsys, case):
    item, expected = BAD_OVERRIDES[case]
    assert main(["eval", "--show-config", item]) == 2
    assert expected in _one_line(capsys)


def test_yaml_merge_keys_may_still_override():
    from mapo.core.config import load_yaml

    assert load_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "f")["c"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("kind", ["policy", "verifier"])
@pytest.mark.parametrize("tamper", ["alter_a_file", "add_a_file"])
def test_a_manifest_beside_weights_is_verified_whatever_the_path(model_dir, tiny_verifier_dir, tmp_path, kind, tamper):
    from mapo.core import shipped
    from mapo.policy import load_policy
    from mapo.verifier.clip import load_verifier

    src, load = (model_dir, load_policy) if kind == "policy" else (tiny_verifier_dir, load_verifier)
    root = _copy(src, tmp_path)
    shipped.write_manifest(root, {"what": "a shipped copy"}, sorted(p.name for p in root.iterdir()))
    load(root)  # intact: loads
    if tamper == "alter_a_file":
        config = json.loads((root / "config.json").read_text())
        (root / "config.json").write_text(json.dumps(config, indent=1))
        match = "config.json does not match the sha256"
    else:
        (root / "adapter_model.safetensors").write_bytes(b"")
        match = "does not list: adapter_model.safetensors"
    with pytest.raises(ModelError, match=match):
        load(root)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nnewpath 0 0 moveto 16 16 lineto stroke\n"


def test_an_image_in_a_format_mapo_does_not_read_is_refused_before_its_plugin_runs(tmp_path):
    from mapo.data.sample import open_image, probe_image

    path = tmp_path / "photo.png"
    path.write_bytes(EPS)
    assert Image.open(path).format == "EPS"  # PIL alone would hand it to its EPS plugin (Ghostscript)
    for reader in (open_image, probe_image):
        with pytest.raises(ValueError, match="cannot decode image"):
            reader(path)
        with pytest.raises(ValueError, match="cannot decode image"):
            reader(EPS)


# ============================================================================ 4. one line, never a traceback


@pytest.mark.parametrize("args, expected", [
    (["--threads", "-1"], "--threads must be 0"),
    (["--device", "nonsense"], "is not a device"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--device", "meta"], "mapo runs on cpu, cuda or mps"),
])
def test_bad_device_and_threads_are_one_line(model_dir, tmp_path, capsys, args, expected):
    if "cuda" in expected and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _eval(model_dir, "synth:1", tmp_path / "e", *args) == 2
    assert expected in _one_line(capsys)
    assert not (tmp_path / "e").exists()


def _write(root: Path, name: str, data: bytes | str) -> None:
    (root / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def _config_edit(edit):
    def apply(root: Path) -> None:
        config = json.loads((root / "config.json").read_text())
        edit(config)
        _write(root, "config.json", json.dumps(config))
    return apply


def _truncate(root: Path) -> None:
    raw = (root / "model.safetensors").read_bytes()
    _write(root, "model.safetensors", raw[: len(raw) // 2])


def _pickle_only(root: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    weights = load_file(str(root / "model.safetensors"))
    (root / "model.safetensors").unlink()
    torch.save({**weights, "x": Payload()}, root / "pytorch_model.bin")


def _processor_size(root: Path, **size) -> None:
    """Set the image processor's size keys in both files that carry them."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        data = json.loads((root / name).read_text())
        section = data.get("image_processor", data)
        section["size"].update(size)
        _write(root, name, json.dumps(data))


def _deep_manifest(root: Path) -> None:
    _write(root, "manifest.json", '{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")


BAD_POLICY_DIRS = {
    "config_is_a_list": (lambda r: _write(r, "config.json", "[1, 2]"), "must hold a JSON object"),
    "config_deeply_nested": (lambda r: _write(r, "config.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                             "nested too deeply"),
    "negative_hidden_size": (_config_edit(lambda c: c["text_config"].update(hidden_size=-64)), "positive integer"),
    "huge_vocabulary": (_config_edit(lambda c: c["text_config"].update(vocab_size=10**12)), "positive integer"),
    "vocabulary_smaller_than_tokenizer": (_config_edit(lambda c: c["text_config"].update(vocab_size=16)),
                                          "the tokenizer and the weights must come from the same checkpoint"),
    "patch_size_zero": (_config_edit(lambda c: c["vision_config"].update(patch_size=0)), "positive integer"),
    "corrupt_tokenizer_json": (lambda r: _write(r, "tokenizer.json", '{"model": {"type": "BPE", "vocab": 7'),
                               "cannot load the tokenizer or processor"),
    "empty_safetensors": (lambda r: _write(r, "model.safetensors", b""), "empty or truncated"),
    "truncated_safetensors": (_truncate, "truncated"),
    "huge_safetensors_header": (lambda r: _write(r, "model.safetensors", struct.pack("<Q", 2**62) + b"{}"),
                                "its header claims"),
    "pickle_only_weights": (_pickle_only, "pytorch_model.bin, a Python pickle"),
    "chat_template_does_not_compile": (lambda r: _write(r, "chat_template.jinja", "{% for %}"),
                                       "chat template"),
    "chat_template_raises": (lambda r: _write(r, "chat_template.jinja", "{{ raise_exception('no') }}"),
                             "chat template"),
    "manifest_nested_deep": (_deep_manifest, "manifest"),
    "processor_min_over_max": (lambda r: _processor_size(r, shortest_edge=99999), "min <= max"),
    "processor_longest_edge_negative": (lambda r: _processor_size(r, longest_edge=-1), "both must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICY_DIRS))
def test_a_damaged_policy_directory_is_one_line(model_dir, tmp_path, capsys, case):
    damage, expected = BAD_POLICY_DIRS[case]
    model = _copy(model_dir, tmp_path)
    damage(model)
    capsys.readouterr()
    assert _eval(model, "synth:1", tmp_path / "e") == 2
    line = _one_line(capsys)
    assert expected in line, line
    assert "weights_only=False" not in line
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("case", ["empty_safetensors", "truncated_safetensors", "huge_safetensors_header"])
def test_a_damaged_verifier_is_one_line(model_dir, tiny_verifier_dir, tmp_path, capsys, case):
    damage, expected = BAD_POLICY_DIRS[case]
    verifier = tmp_path / "verifier"
    shutil.copytree(tiny_verifier_dir, verifier)
    damage(verifier)
    assert _eval(model_dir, "synth:1", tmp_path / "e", "--verifier", str(verifier)) == 2
    assert expected in _one_line(capsys)


def test_verify_of_a_tampered_default_policy_copy_is_one_line(tmp_path, capsys):
    from mapo.policy import default

    copy = tmp_path / "warmstart"
    shutil.copytree(default.DEFAULT_DIR, copy)
    _write(copy, "config.json", (copy / "config.json").read_text() + " ")
    assert default.main(["verify", "--path", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and "does not match the sha256" in err


def test_a_full_disk_while_checkpointing_stops_with_one_line_and_a_sound_last_checkpoint(tmp_path, monkeypatch):
    from mapo.train import checkpoint as ckpt_mod
    from mapo.train.checkpoint import latest_checkpoint, save_checkpoint
    from mapo.train.optim import OptimConfig, build_optimizer, build_scheduler

    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig())
    sched = build_scheduler(opt, OptimConfig(), 10)

    def save_model(d: Path) -> None:
        d.mkdir()
        save_file(model.state_dict(), str(d / "model.safetensors"))

    save_checkpoint(tmp_path, 1, save_model=save_model, optimizer=opt, scheduler=sched, state={})
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # half the bytes reach the disk, then it is full
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(DataError) as e:
        save_checkpoint(tmp_path, 2, save_model=save_model, optimizer=opt, scheduler=sched, state={})
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message and "step_000001" in message
    assert "--resume" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert latest_checkpoint(tmp_path).name == "step_000001"


def test_training_reports_a_full_disk_as_one_line(tmp_path, capsys, monkeypatch):
    import mapo.train.rl as rl

    def full(*a, **k):
        raise ckpt_error

    from mapo.train.checkpoint import CheckpointWriteError

    ckpt_error = CheckpointWriteError("cannot write checkpoint step_000001 in X: No space left on device; ...")
    monkeypatch.setattr(rl, "train", full)
    assert main(["train", "--out", str(tmp_path / "r"), "--algo", "grpo", "policy=default"]) == 2
    assert "No space left on device" in _one_line(capsys, "train")


def test_an_impossible_image_path_skips_that_row_only(tmp_path):
    from mapo.eval import load_eval_samples

    write_samples(synth.generate(2, seed=5, config=LEVEL), tmp_path / "d", ["mme"])
    source = next((tmp_path / "d" / "mme").glob("*.json"))
    records = json.loads(source.read_text())
    records[0]["Image"] = "x" * 5000 + ".png"
    source.write_text(json.dumps(records))
    samples, report = load_eval_samples(str(source))
    assert len(samples) == 1
    (row,) = report["skipped_rows"]
    assert row["row"] == 0 and "File name too long" in row["reason"]


def test_damaged_resume_files_are_one_line_or_passed_over(tmp_path):
    from mapo.train.checkpoint import load_trainer_state, save_checkpoint, verify_checkpoint
    from mapo.train.metrics_log import read_metrics
    from mapo.train.optim import OptimConfig, build_optimizer, build_scheduler

    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig())
    sched = build_scheduler(opt, OptimConfig(), 10)

    def save_model(d: Path) -> None:
        d.mkdir()
        save_file(model.state_dict(), str(d / "model.safetensors"))

    ckpt = save_checkpoint(tmp_path, 1, save_model=save_model, optimizer=opt, scheduler=sched, state={})
    record = json.loads((ckpt / "checkpoint.json").read_text())
    record["files"]["trainer.pt"]["size"] = 1e999
    (ckpt / "checkpoint.json").write_text(json.dumps(record).replace("Infinity", "1e999"))
    assert "checkpoint.json is damaged" in verify_checkpoint(ckpt)
    torch.save({"optimizer": {"state": 1}, "scheduler": [], "rng": {}}, ckpt / "trainer.pt")
    with pytest.raises(DataError, match="trainer.pt does not fit this run"):
        load_trainer_state(ckpt, opt, sched)
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 0.5}\n[1, 2]\n"text"\n{"no": "step"}\n\xff\xfe\n'
                                            b'{"step": true}\n{"step": 2, "loss": 0.4}\n')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("how", ["truncated_images", "view_max_pixels"])
def test_an_eval_whose_every_row_is_skipped_keeps_out_and_says_why(model_dir, tmp_path, capsys, how):
    folder = tmp_path / "d"
    write_samples(synth.generate(3, seed=5, config=LEVEL), folder, ["vstar"])
    extra = []
    if how == "truncated_images":
        for image in (folder / "vstar").rglob("*.png"):
            raw = image.read_bytes()
            image.write_bytes(raw[: len(raw) // 2])
    else:
        extra = ["rollout.tool.view_min_pixels=196", "rollout.tool.view_max_pixels=784"]
    out = tmp_path / "e"
    assert _eval(model_dir, str(folder / "vstar"), out, "benchmark=vstar", *extra) == 1
    line = _one_line(capsys)
    assert "all 3 row(s) were skipped" in line and "the commonest reason (3 row(s))" in line
    assert str(out / "skipped_rows.jsonl") in line
    rows = [json.loads(r) for r in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["reason"] for r in rows)
    assert json.loads((out / "metrics.json").read_text())["broken_rows"] == 3


@pytest.mark.parametrize("damage", ["not_json", "fingerprint_not_a_mapping", "older_fingerprint"])
def test_a_damaged_or_older_eval_json_is_one_line(model_dir, tmp_path, capsys, damage):
    out = tmp_path / "e"
    assert _eval(model_dir, "synth:1:easy:7", out) == 0
    meta = json.loads((out / "eval.json").read_text())
    text = {"not_json": "{", "fingerprint_not_a_mapping": json.dumps({"fingerprint": [1]}),
            "older_fingerprint": json.dumps({"fingerprint": meta["fingerprint"]})}[damage]
    (out / "eval.json").write_text(text)
    assert _eval(model_dir, "synth:1:easy:7", out) == 2
    line = _one_line(capsys)
    assert ("older mapo" if damage == "older_fingerprint" else "is damaged") in line and "--overwrite" in line
    assert _eval(model_dir, "synth:1:easy:7", out, "--overwrite") == 0


def test_every_error_type_is_a_value_error():
    for cls in (ConfigError, DataError, ModelError):
        assert issubclass(cls, MapoError) and issubclass(cls, ValueError)

