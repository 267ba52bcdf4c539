"""The embedded default pipeline, stage by stage, with a config-keyed cache.

``data -> verifier -> warm start -> RL -> evaluation (before / after) -> search check -> summary``.

The search check (:mod:`mapo.pipelines.search_check`) evaluates listed policies on a level
where the zoom location matters; it trains nothing.

Two evaluation sets: the validation set (``data``: the RL run's periodic evaluation,
and where settings are chosen) and the test set (``test``: measured once at the end,
nothing chosen on it). The summary's verdict is read on the test set; the
validation figures are shown beside it, labelled (``test.n: 0`` drops the test set and
the verdict then says it is on the validation set).
``mapo demo`` runs it; ``mapo experiment compare`` reuses its first three stages.

Stages whose output is a pure function of their config (held-out data, verifier,
SFT warm start) are cached under ``cache_dir/<stage>-<hash>``, where ``hash`` is the
sha256 of the stage's config (keys that change speed only, such as thread counts,
left out) and :data:`~mapo.pipelines.stage_cache.STAGE_VERSION` (:mod:`mapo.pipelines.stage_cache`). A stage is built in a temporary directory and
renamed into place, so an interrupted build never leaves a directory that looks
finished. The verifier and the warm start are first looked for among the checkpoints
shipped in the package (``verifier_source`` / ``warmstart.source``: ``default``); the
shipped verifier is used only when its recorded training config is ``cfg.verifier``.
The RL run and the evaluations live in the run directory; run again on the same
directory they resume (a finished RL run and finished evaluations are read back,
not recomputed). The summary's before/after table and verdict are :mod:`mapo.pipelines.demo_summary`'s.

Choices that are ours, not the paper's: the demo's budgets (steps, group size,
held-out size) are sized for two CPU cores, not for a result; the "before" policy
is the warm start itself (the paper starts RL from a pretrained VLM, not from a
tiny SFT model); "tool precision" is the hit rate of valid crops (IoU >= 0.5 with
a target box), a stand-in for the paper's unpublished definition.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapo.core.config import to_dict
from mapo.pipelines.demo_config import PipelineConfig, rl_config, task_fingerprint
from mapo.pipelines.demo_summary import TEST_BEFORE, TEST_EVAL, summary_markdown, training_trend
from mapo.metrics.before_after import before_after, verdict
from mapo.core.shipped import SHIPPED_PREFIX
from mapo.pipelines.stage_cache import SPEED_ONLY_KEYS, drop_keys, cached_stage
from mapo.verifier.train import VerifierTrainConfig

DEMO_MARKER = ".mapo-demo"  # marks a run directory the pipeline wrote, so --fresh never wipes a stranger's files


# ----------------------------------------------------------------------------- stages


def heldout_stage(cfg: PipelineConfig, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The validation (held-out) set written in V* layout (``mapo data synth`` format); returns (folder, reused)."""
    return _synth_set_stage(cfg.heldout_spec(), "heldout", cfg.cache_dir, log)


def test_stage(cfg: PipelineConfig, log: Callable[[str], None] = print) -> tuple[Path | None, bool]:
    """The test set (``cfg.test``), like :func:`heldout_stage`; (None, False) when ``test.n`` is 0."""
    spec = cfg.test_spec()
    if spec is None:
        return None, False
    return _synth_set_stage(spec, "test", cfg.cache_dir, log)


def _synth_set_stage(spec: dict[str, Any], name: str, cache_dir: str, log: Callable[[str], None]) -> tuple[Path, bool]:
    def build(tmp: Path) -> None:
        from mapo.data import synth
        from mapo.data.benchmarks import write_samples

        level = synth.level_config(spec["level"], **spec["synth"])
        write_samples(synth.generate(spec["n"], spec["seed"], level), tmp, ["vstar"], name=f"{name}_{spec['level']}")

    # The key is the set's spec alone: a validation and a test set with one spec are one set (seeds differ by check).
    path, reused = cached_stage("data", spec, build, cache_dir, log)
    return path / "vstar", reused


def verifier_stage(
    cfg: PipelineConfig, log: Callable[[str], None] = print, progress: bool | str = False
) -> tuple[Path, bool]:
    """The verifier's directory and whether it was reused (cached, shipped or given: nothing trained).

    Which one is ``cfg.verifier_source``'s choice: the shipped verifier, a given directory,
    or the tiny CLIP trained by :func:`mapo.verifier.train.train_tiny_clip` (cached).

    Raises:
        ValueError: a given directory is not a CLIP/SigLIP model; the shipped verifier
            does not match its manifest (:class:`mapo.verifier.default.DefaultVerifierError`).
    """
    source = cfg.verifier_source
    if source not in ("default", "train"):
        from mapo.verifier import check_model_dir

        try:
            path = check_model_dir(source)
        except ValueError as e:
            raise ValueError(f"verifier_source {source!r} is not a verifier directory: {e}") from None
        log(f"verifier: {path}")
        return path, True
    if source == "default":
        shipped = _shipped_verifier(cfg.verifier, log)
        if shipped is not None:
            return shipped, True

    def build(tmp: Path) -> None:
        from mapo.verifier.train import train_tiny_clip

        train_tiny_clip(cfg.verifier, tmp, progress=progress)

    key = {"verifier": to_dict(cfg.verifier), "task": task_fingerprint(cfg.verifier.synth_level)}
    if cfg.verifier.data is not None:  # trained on files: the task's defaults do not matter
        key.pop("task")
    return cached_stage("verifier", key, build, cfg.cache_dir, log)


def _shipped_verifier(config: VerifierTrainConfig, log: Callable[[str], None]) -> Path | None:
    """The shipped verifier's directory after its manifest check, or None (logging why) when ``config`` trains another."""
    from mapo.verifier import default

    if not (default.DEFAULT_DIR / default.MANIFEST).is_file():
        log(f"no shipped verifier at {default.DEFAULT_DIR}: training the verifier instead")
        return None
    manifest = default.verify(default.DEFAULT_DIR)  # an altered checkpoint is an error, not a silent fallback
    reason = _verifier_mismatch(config, manifest)
    if reason:
        log(f"not using the shipped verifier ({reason}): training the verifier instead; "
            f"the shipped one is {manifest.get('config_file', 'its manifest')}'s recipe")
        return None
    top1 = (manifest.get("metrics") or {}).get("retrieval_top1")
    log(f"verifier: the shipped verifier {default.DEFAULT_DIR}" + (f" (held-out retrieval top-1 {top1:.3f})" if top1 else ""))
    return default.DEFAULT_DIR


def _verifier_mismatch(config: VerifierTrainConfig, manifest: dict[str, Any]) -> str | None:
    """Why the shipped verifier is not what ``config`` would train (None: it is).

    Compares what the cache key of a trained verifier covers: the training config without
    speed-only keys, and the synthetic task's resolved config (a changed task level means
    other crops and captions).
    """
    from mapo.verifier import default

    ours = drop_keys(to_dict(config), SPEED_ONLY_KEYS)
    theirs = drop_keys(to_dict(default.training_config(manifest)), SPEED_ONLY_KEYS)
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        return "; ".join(f"verifier.{k} is {ours[k]!r}, shipped {theirs[k]!r}" for k in differ)
    if default.task_of(config) != manifest.get("task"):
        return f"the {config.synth_level!r} task differs from the one it was trained on (the task's code changed)"
    return None


def warmstart_stage(
    cfg: PipelineConfig, log: Callable[[str], None] = print, progress: bool | str = False
) -> tuple[Path, str, bool]:
    """The starting policy's directory, where it came from (``default``, ``sft`` or ``path``), and whether reused.

    A shipped or given checkpoint counts as reused (nothing was trained).
    """
    source = cfg.warmstart.source
    if source.startswith(SHIPPED_PREFIX):  # 'shipped:NAME': a checkpoint under mapo/assets/
        from mapo.policy import default
        from mapo.policy.default import resolve_policy_dir

        try:
            path = resolve_policy_dir(source)  # the one resolver of shipped names (mapo.core.shipped.shipped_dir)
        except ValueError as e:
            raise ValueError(f"warmstart.source {e}") from None
        default.verify(path)  # an altered checkpoint is an error, not a silent fallback
        log(f"warm start: the shipped checkpoint {path}")
        return path, "shipped", True
    if source not in ("default", "sft"):
        from mapo.policy import missing_files

        path = Path(source)
        missing = missing_files(path) if path.is_dir() else ["the directory itself"]
        if missing:
            raise ValueError(f"warmstart.source {source!r} is not a policy checkpoint directory: missing {', '.join(missing)}")
        log(f"warm start: {path}")
        return path, "path", True
    if source == "default":
        shipped = _shipped_default(log)
        if shipped is not None:
            return shipped, "default", True

    sft = cfg.warmstart.recipe()

    def build(tmp: Path) -> None:
        from mapo.train.sft import run_sft

        run_sft(dataclasses.replace(sft, threads=cfg.threads), tmp / "run", progress=progress)

    key = {"sft": to_dict(sft), "task": task_fingerprint(sft.data.level, sft.data.synth.set_keys())}
    path, reused = cached_stage("sft", key, build, cfg.cache_dir, log)
    return path / "run" / "final", "sft", reused


def _shipped_default(log: Callable[[str], None]) -> Path | None:
    """The shipped default policy's directory after its manifest check, or None when none is shipped."""
    try:
        from mapo.policy import default
    except ImportError:
        return None
    if not (Path(default.DEFAULT_DIR) / default.MANIFEST).is_file():
        log(f"no shipped default policy at {default.DEFAULT_DIR}: training the warm start with SFT instead")
        return None
    default.verify(default.DEFAULT_DIR)  # an altered checkpoint is an error, not a silent fallback
    log(f"warm start: the shipped default policy {default.DEFAULT_DIR}")
    return Path(default.DEFAULT_DIR)


def eval_config(cfg: PipelineConfig, rl_cfg: Any):
    """Greedy evaluation with the RL stage's own turn and token budgets (before and after are comparable)."""
    from mapo.eval import EvalConfig

    rollout = dataclasses.replace(rl_cfg.rollout, group_size=1, greedy=True, batch_size=cfg.eval_batch_size)
    return EvalConfig(rollout=rollout, verifier_batch_size=rl_cfg.verifier_batch_size)


def evaluate_stage(policy_dir: Path, heldout: Path, verifier_dir: Path, out: Path, config: Any) -> dict[str, Any]:
    """``mapo eval`` of ``policy_dir`` on the held-out set into ``out`` (resumes); returns its metrics.json."""
    from mapo.eval import evaluate
    from mapo.policy import load_policy
    from mapo.verifier.clip import load_verifier

    policy = load_policy(policy_dir, dtype="float32", device="cpu")
    verifier = load_verifier(verifier_dir)
    result = evaluate(str(heldout), out, policy=policy, verifier=verifier, config=config,
                      run_info={"policy": str(policy_dir), "verifier": str(verifier_dir)})
    return result.metrics


# ----------------------------------------------------------------------------- the pipeline


class _Clock:
    """Wall time of each stage, whether it was reused (cache, shipped or given checkpoint), and how it was obtained.

    Each stage logs one line when it starts and one when it ends (``log``), so a run's
    log file shows where the time went.
    """

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.log = log

    def run(self, name: str, fn: Callable[[], Any], how: Callable[[Any], str] = lambda _: "ran") -> Any:
        """``fn()``, timed; ``how(result)`` is one of :data:`HOW`."""
        self.log(f"stage {name}: started")
        started = time.perf_counter()
        out = fn()
        note = how(out)
        self.stages[name] = {"seconds": round(time.perf_counter() - started, 2), "reused": note != "ran", "how": note}
        self.log(f"stage {name}: {note} in {self.stages[name]['seconds']:.1f} s")
        return out


HOW = ("ran", "reused from cache", "shipped checkpoint", "given checkpoint")


def _cache_how(result: tuple) -> str:
    return "reused from cache" if result[-1] else "ran"


def _verifier_how(cfg: PipelineConfig) -> Callable[[tuple], str]:
    def how(result: tuple) -> str:
        from mapo.verifier import default

        if cfg.verifier_source not in ("default", "train"):
            return "given checkpoint"
        return "shipped checkpoint" if result[0] == default.DEFAULT_DIR else _cache_how(result)

    return how


def _warmstart_how(result: tuple) -> str:
    how = {"default": "shipped checkpoint", "shipped": "shipped checkpoint", "path": "given checkpoint"}
    return how.get(result[1]) or _cache_how(result)


def prepare_demo_dir(out: Path, fresh: bool) -> None:
    """Create ``out`` (or, with ``fresh``, wipe a directory this pipeline wrote earlier); refuse strangers' files."""
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise ValueError(f"{out} is not empty and was not written by `mapo demo`; choose another --out")
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by mapo demo\n", encoding="utf-8")


def run_pipeline(
    cfg: PipelineConfig,
    out: str | Path,
    *,
    fresh: bool = False,
    progress: bool | str = True,
    report: bool = True,
    command: str = "mapo demo",
    forced_turns: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage; write ``out/summary.json`` and ``out/summary.md``; return the summary.

    Layout of ``out``: ``rl/`` (the `mapo train` run; ``rl/final`` the trained policy,
    ``rl/eval`` its validation evaluation, ``rl/eval_test`` its test evaluation),
    ``eval_before/`` and ``eval_before_test/`` (the warm start's), ``search/<policy>/`` (the search
    check's evaluations, when ``search.policies`` names any),
    ``report/index.html``, ``summary.{json,md}``. ``forced_turns`` is passed to the
    RL stage's training rollouts (tests script tool calls with it).
    """
    import torch

    from mapo.train.rl import train

    if not isinstance(cfg, PipelineConfig):
        raise ValueError(f"cfg must be a PipelineConfig, got {type(cfg).__name__}")
    started = time.perf_counter()
    out = Path(out)
    prepare_demo_dir(out, fresh)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    clock = _Clock(log)
    heldout, _ = clock.run("data", lambda: heldout_stage(cfg, log), _cache_how)
    test, _ = clock.run("test data", lambda: test_stage(cfg, log), _cache_how) if cfg.test.n else (None, False)
    verifier, _ = clock.run("verifier", lambda: verifier_stage(cfg, log, progress), _verifier_how(cfg))
    policy, policy_source, _ = clock.run("warm start", lambda: warmstart_stage(cfg, log, progress), _warmstart_how)
    rl_cfg = rl_config(cfg, policy=str(policy), verifier=str(verifier), heldout=str(heldout))
    rl_dir = out / "rl"
    resume = (rl_dir / "run.json").is_file()
    if resume:
        log(f"resuming the RL run in {rl_dir} (a finished run is read back)")
    try:
        rl_summary = clock.run("rl", lambda: train(rl_cfg, rl_dir, resume=resume, progress=progress, forced_turns=forced_turns))
    except ValueError as e:
        if resume:
            raise ValueError(f"{e}\n(the RL run in {rl_dir} was made with another config: run with --fresh)") from None
        raise
    ecfg = eval_config(cfg, rl_cfg)
    before = clock.run("eval before", lambda: evaluate_stage(policy, heldout, verifier, out / "eval_before", ecfg))
    after = clock.run("eval after", lambda: evaluate_stage(rl_dir / "final", heldout, verifier, rl_dir / "eval", ecfg))
    paths = {"run_dir": str(out), "rl_run": str(rl_dir), "policy_before": str(policy), "policy_after": str(rl_dir / "final"),
             "verifier": str(verifier), "heldout": str(heldout), "eval_before": str(out / "eval_before"),
             "eval_after": str(rl_dir / "eval")}
    test_table = None
    if test is not None:  # measured once, after everything was chosen on the validation set
        t_before = clock.run("test before", lambda: evaluate_stage(policy, test, verifier, out / TEST_BEFORE, ecfg))
        t_after = clock.run("test after", lambda: evaluate_stage(rl_dir / "final", test, verifier, rl_dir / TEST_EVAL, ecfg))
        test_table = before_after(t_before, t_after)
        paths.update({"test": str(test), "test_before": str(out / TEST_BEFORE), "test_after": str(rl_dir / TEST_EVAL)})
    search = None
    if cfg.search.policies:  # evaluation only: where the zoom location matters
        from mapo.pipelines.search_check import search_check_stage

        search = clock.run("search check", lambda: search_check_stage(
            cfg, verifier, ecfg, out / "search",
            synth_set=lambda spec, name: _synth_set_stage(spec, name, cfg.cache_dir, log),
            evaluate=evaluate_stage, log=log))
        paths["search"] = str(out / "search")
    if report:
        from mapo.report import build_report

        index = clock.run("report", lambda: build_report(rl_dir, out / "report", force=True))
        paths["report"] = str(index)
    table = before_after(before, after)
    # The verdict is read on the test set when there is one; the validation table is shown beside it, labelled.
    headline = test_table if test_table is not None else table
    summary = {
        "command": command, "n_heldout": cfg.data.n, "rl_steps": rl_summary["steps"],
        "algorithm": rl_cfg.advantage.estimator, "warm_start": policy_source,
        "sets": {"validation": {"n": cfg.data.n, "seed": cfg.data.seed},
                 "test": {"n": cfg.test.n, "seed": cfg.test.seed} if test_table is not None else None},
        "verdict_set": "test" if test_table is not None else "validation",
        "table": headline, "table_validation": table, "table_test": test_table,
        "verdict": verdict(headline, cfg.test.n if test_table is not None else cfg.data.n),
        "search": search,
        "rl_trend": training_trend(rl_dir / "metrics.jsonl"),
        "rl_train_last": rl_summary.get("train", {}),
        "stages": clock.stages, "wall_s": round(time.perf_counter() - started, 2), "paths": paths,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


__all__ = [
    "evaluate_stage", "heldout_stage", "run_pipeline",
    "test_stage", "verifier_stage", "warmstart_stage",
]
