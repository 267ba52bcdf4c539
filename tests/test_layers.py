"""The package's layers: every import goes down (or stays in its own folder), and the pure layers stay torch-free.

The layer table is docs/architecture.md's ("Layers"); keep the two in step. A module
may import its own folder and any lower layer; folders on the same layer do not
import each other. Lazy imports inside functions count: they are dependencies too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mapo"

# Lowest first. Each entry: the folders (top-level packages under mapo/) on that layer.
LAYERS: list[tuple[str, ...]] = [
    ("core",),  # config grammar, errors, fingerprints, run directories, shipped names
    ("agent",),  # tools, protocol, one episode's rules: pure Python, no torch
    ("data",),  # samples, benchmark formats, the synthetic task, oracle transcripts
    ("policy",),  # model families, loading, backends, processors, the tiny builder
    ("verifier",),  # CLIP/SigLIP verifiers and the tiny CLIP trainer
    ("engine", "algo"),  # playing episodes with a model; the maths over played trajectories
    ("metrics",),  # metric sets, the held-out evaluator, records
    ("eval", "report"),  # `mapo eval` and the HTML report
    ("train",),  # the SFT and RL recipes and their run machinery
    ("pipelines",),  # the demo, comparisons over seeds, the rollout benchmark
    ("cli", "integrations"),  # the `mapo` command; verl
]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
# Files at the top of mapo/ that are not layers: the version and `python -m mapo`.
TOP_FILES = {"__init__", "__main__"}
# Modules that must import without torch or transformers (a subprocess checks sys.modules).
TORCH_FREE = ("mapo.core", "mapo.agent", "mapo.agent.episode", "mapo.agent.protocol", "mapo.agent.tools", "mapo.report")


def folder_of(module: str) -> str | None:
    """The layer folder of a dotted module under mapo (``mapo.engine.rollout`` -> ``engine``); None for mapo itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mapo" else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``mapo...`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mapo")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mapo"):
            found.add(node.module)
            # `from mapo.agent import tools` names a module, not an attribute
            found |= {f"{node.module}.{a.name}" for a in node.names if (PACKAGE.parent / node.module.replace(".", "/") / a.name).exists()}
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for each import that leaves its folder for a folder not on a lower layer."""
    bad = []
    for importer, modules in sorted(graph.items()):
        src = folder_of(importer)
        for target in sorted(modules):
            dst = folder_of(target)
            if src is None or dst is None or src == dst or src in TOP_FILES:
                continue
            if dst not in RANK or src not in RANK:
                bad.append(f"{importer} -> {target} (folder not in LAYERS)")
            elif RANK[dst] >= RANK[src]:
                bad.append(f"{importer} (layer {RANK[src]}) -> {target} (layer {RANK[dst]})")
    return bad


def package_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}


def test_every_folder_of_the_package_is_on_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    files = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders == set(RANK), f"folders not in LAYERS: {folders - set(RANK)}; LAYERS without a folder: {set(RANK) - folders}"
    assert files == TOP_FILES, f"a module at the top of mapo/ belongs in a layer folder: {sorted(files - TOP_FILES)}"


def test_imports_only_go_down():
    assert upward_imports(package_graph()) == []


def test_the_check_sees_an_upward_import_and_a_sideways_one():
    graph = {
        "mapo.agent.episode": {"mapo.engine.trajectory", "mapo.core.config", "mapo.agent.tools"},
        "mapo.algo.semantic": {"mapo.engine.rollout"},  # engine and algo share a layer
        "mapo.train.rl": {"mapo.algo.advantage", "mapo.mystery.x"},
    }
    assert upward_imports(graph) == [
        "mapo.agent.episode (layer 1) -> mapo.engine.trajectory (layer 5)",
        "mapo.algo.semantic (layer 5) -> mapo.engine.rollout (layer 5)",
        "mapo.train.rl -> mapo.mystery.x (folder not in LAYERS)",
    ]


def test_imported_modules_reads_lazy_imports_and_module_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from mapo.agent import tools\ndef g():\n    from mapo.engine.rollout import rollout\n    import mapo.core.config\n")
    assert imported_modules(f) == {"mapo.agent", "mapo.agent.tools", "mapo.engine.rollout", "mapo.core.config"}


@pytest.mark.parametrize("module", TORCH_FREE)
def test_pure_layers_import_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", f"{module} pulls in {out.stdout.strip()}"


def test_the_torch_check_sees_torch():
    code = "import sys, mapo.engine.trajectory; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "['torch', 'transformers']"
