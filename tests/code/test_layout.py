"""The layout itself: layers import only downward, dvc.yaml's code deps cover each stage's
import closure, and every stage has the one shape (a module, a keyword-only run(), a main())."""

from __future__ import annotations

import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mmfuse.source import PACKAGE, SRC, all_modules, closure, imports_of, module_file

ROOT = Path(__file__).resolve().parents[2]
STAGE_CMD = re.compile(r"^python -m mmfuse\.stages\.(\w+)(\s|$)")


def layers() -> dict[str, int]:
    """Top-level package or module -> layer (0 = bottom), from the README's "Layer order" block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Layer order\n.*?```text\n(.*?)```", text, re.S)
    assert block, "README.md lacks the '### Layer order' section with a ```text block"
    rows = [line.split() for line in block.group(1).strip().splitlines()]
    return {name: level for level, row in enumerate(reversed(rows)) for name in row}


def top(module: str) -> str | None:
    """mmfuse.training.loop -> training; the root package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer() -> None:
    known = layers()
    tops = {top(m) for m in all_modules()} - {None}
    assert tops <= set(known), f"packages missing from the README's layer order: {sorted(tops - set(known))}"


def upward(edges: list[tuple[str, str]], known: dict[str, int]) -> list[str]:
    """The (importer, imported) edges that do not go to a lower layer (same package excepted)."""
    found = []
    for module, target in edges:
        source, wanted = top(module), top(target)
        if source is not None and wanted is not None and wanted != source and known[wanted] >= known[source]:
            found.append(f"{module} imports {target} ({source} is not above {wanted})")
    return found


def test_no_import_runs_upward() -> None:
    edges = [(module, target) for module in all_modules() for target in imports_of(module)]
    assert len(edges) > 100  # the graph was read
    problems = upward(edges, layers())
    assert not problems, "\n".join(problems)


def test_the_layer_check_catches_upward_and_sideways_imports() -> None:
    known = layers()
    assert upward([("mmfuse.data.avdigits", "mmfuse.stages.ingest")], known)  # upward
    assert upward([("mmfuse.training.loop", "mmfuse.evaluation.metrics")], known)  # sideways, same layer
    assert upward([("mmfuse.params.data", "mmfuse.modality")], known) == []  # downward
    assert upward([("mmfuse.stages.ingest", "mmfuse.stages")], known) == []  # own package


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _dep_paths(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


def uncovered(modules: set[str], deps: list[Path]) -> list[str]:
    """Files of `modules` that no dep (a file, or a folder above it) covers."""
    files = sorted(module_file(m) for m in modules)
    return [str(f.relative_to(ROOT)) for f in files if not any(f == d or d in f.parents for d in deps)]


def test_the_closure_check_finds_a_missing_dep() -> None:
    """preprocess reads the manifest contract: without data/manifest.py in its deps it would go stale."""
    modules = closure(f"{PACKAGE}.stages.preprocess")
    assert f"{PACKAGE}.data.manifest" in modules and f"{PACKAGE}.params.preprocess" in modules
    src = SRC / PACKAGE
    assert uncovered(modules, [src / "preprocess", src / "params", src / "stages"]) == [
        "src/mmfuse/__init__.py",
        "src/mmfuse/data/__init__.py",
        "src/mmfuse/data/manifest.py",
        "src/mmfuse/data/media.py",
        "src/mmfuse/data/wav.py",
        "src/mmfuse/errors.py",
        "src/mmfuse/io.py",
        "src/mmfuse/modality.py",
    ]


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_deps_cover_the_import_closure_of_its_module(name: str) -> None:
    stage = dvc_stages()[name]
    match = STAGE_CMD.match(" ".join(stage["cmd"].split()))
    assert match and match.group(1) == name, f"{name}: cmd must run `python -m mmfuse.stages.{name} ...`"
    deps = [ROOT / d for d in _dep_paths(stage)]
    missing = uncovered(closure(f"{PACKAGE}.stages.{name}"), deps)
    assert not missing, f"dvc.yaml stage {name!r} lacks deps on the code it runs: {missing}"
    stale = [str(d.relative_to(ROOT)) for d in deps if d.is_relative_to(SRC) and not d.exists()]
    assert not stale, f"dvc.yaml stage {name!r} names code that does not exist: {stale}"


def test_one_module_per_stage_and_one_stage_per_module() -> None:
    modules = {p.stem for p in (SRC / PACKAGE / "stages").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(dvc_stages())


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_a_stage_is_a_keyword_only_run_and_a_main_taking_its_paths(name: str) -> None:
    module = importlib.import_module(f"{PACKAGE}.stages.{name}")
    run = inspect.signature(module.run)
    assert run.parameters and all(p.kind is p.KEYWORD_ONLY for p in run.parameters.values()), f"{name}.run: {run}"
    options = {f"--{p.replace('_', '-')}" for p in inspect.signature(module.main).parameters}
    given = {arg for arg in shlex.split(dvc_stages()[name]["cmd"]) if arg.startswith("--")}
    assert given == options, f"{name}: dvc.yaml passes {sorted(given)}, main takes {sorted(options)}"
