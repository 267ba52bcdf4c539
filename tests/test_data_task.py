"""The typed task spec: set by the generator, stored by every writer, restored by every reader."""

import json

import pytest

from mapo.agent import tools
from mapo.data import synth
from mapo.data.benchmarks import load_samples
from mapo.data.sample import Sample
from mapo.data.task import TaskSpec, tool_config_for
from mapo.data.benchmarks import FORMATS, write_samples


def test_synth_sets_the_task_spec_from_its_config():
    config = synth.level_config("pattern")
    s = synth.generate(1, 0, config)[0]
    assert s.task == TaskSpec(view_side=112, obs_side=112, grid=4, family="pattern")
    assert not {"view_side", "obs_side", "grid", "family"} & set(s.meta)  # the facts live in one place


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_the_task_spec(tmp_path, fmt):
    samples = synth.generate(4, 1, synth.level_config("hard"))  # hard mixes glyph and relative families
    path = write_samples(samples, tmp_path, [fmt])[fmt]
    back = {s.id: s for s in load_samples(path, strict=True)}
    assert [back[s.id].task for s in samples] == [s.task for s in samples]
    assert all(s.task.view_side == 224 and s.task.grid == 6 for s in back.values())


def test_a_file_written_before_task_specs_still_reads(tmp_path):
    """Old files kept the facts in meta: the reader moves them into a spec (and out of meta)."""
    s = synth.generate(1, 0, "easy")[0]
    path = write_samples([s], tmp_path, ["mme"])["mme"]
    records = json.loads(path.read_text())
    extra = records[0]["mapo"]
    del extra["task"]
    extra["meta"].update(view_side=112, obs_side=224, grid=4, family="glyph")
    path.write_text(json.dumps(records))
    (old,) = load_samples(path, strict=True)
    assert old.task == s.task
    assert "view_side" not in old.meta and old.meta["level"] == "easy"


def test_a_bad_task_spec_is_a_bad_record(tmp_path):
    s = synth.generate(2, 0, "easy")
    path = write_samples(s, tmp_path, ["mme"])["mme"]
    records = json.loads(path.read_text())
    records[0]["mapo"]["task"]["view_side"] = "wide"
    path.write_text(json.dumps(records))
    loaded = load_samples(path)
    assert len(loaded) == 1 and "task" in loaded.report.issues[0].reason
    with pytest.raises(ValueError, match="view_side must be a positive integer"):
        load_samples(path, strict=True)


def test_tool_config_for_reads_sample_spec_or_config_alike():
    config = synth.level_config("pattern")
    expected = tools.ToolConfig(
        view_min_pixels=112 * 112, view_max_pixels=112 * 112, obs_min_pixels=112 * 112, obs_max_pixels=112 * 112
    )
    s = synth.generate(1, 0, config)[0]
    assert tool_config_for(config) == tool_config_for(s) == tool_config_for(s.task) == expected
    benchmark = Sample(id="b", image=b"", question="q")
    assert tool_config_for(benchmark) is tools.DEFAULT_TOOL_CONFIG


def test_task_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="family"):
        TaskSpec(view_side=112, obs_side=112, family="colour")
    with pytest.raises(ValueError, match="unknown"):
        TaskSpec.from_dict({"view_side": 112, "obs_side": 112, "side": 3})
    with pytest.raises(ValueError, match="task must be a TaskSpec"):
        Sample(id="x", image=b"", question="q", task={"view_side": 112})
