"""The champion in the BentoML store: promotion, crash safety (a real kill mid-copy), cleaning, rollback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from mmfuse.inference import registry

pytestmark = pytest.mark.usefixtures("empty_store")


def _artifact(tmp_path: Path, name: str, files: int = 1) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"name": "{name}"}}')
    (folder / "model.safetensors").write_bytes(name.encode() * 100)
    for k in range(files):
        (folder / f"part{k}.bin").write_bytes(os.urandom(1000))
    return folder


def _name() -> str:
    return (registry.champion_path() / "config.json").read_text()


def test_first_promotion_makes_a_champion(tmp_path):
    assert registry.champion() is None
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.champion_path()
    tag = registry.promote(_artifact(tmp_path, "a"), {"accuracy": 91.0})
    assert str(registry.champion().tag) == tag
    assert _name() == '{"name": "a"}'
    assert registry.champion().info.metadata["accuracy"] == 91.0
    assert registry.broken_versions() == [] and [str(m.tag) for m in registry.versions()] == [tag]


def test_companions_travel_with_the_weights(tmp_path):
    calibration = tmp_path / "calibration.json"
    calibration.write_text('{"temperature": 1.2}')
    registry.promote(_artifact(tmp_path, "a"), {}, {"calibration.json": calibration})
    assert (registry.champion_path() / "calibration.json").read_text() == '{"temperature": 1.2}'
    assert "calibration.json" in registry.champion().info.metadata[registry.FILES]


def test_an_exception_mid_promotion_keeps_the_old_champion(tmp_path, monkeypatch):
    old = registry.promote(_artifact(tmp_path, "a"), {})

    def crash(src, dst, **kwargs):
        Path(dst, "config.json").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(_artifact(tmp_path, "b"), {})
    monkeypatch.undo()
    assert str(registry.champion().tag) == old and _name() == '{"name": "a"}'
    assert len(registry.versions()) == 1


# Runs a promotion in a child process that SIGKILLs itself on its `kill_at`-th file copy whose
# destination lies under `where` (BentoML's temp folder, or the store itself).
KILLED_PROMOTION = """
import os, shutil, signal, sys
from pathlib import Path
from mmfuse.inference import registry

artifact, where, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
roots = {"staging": registry.store_root() / "mmfuse" / "staging", "store": registry.store_root() / "models"}
copied = 0
real_copyfile = shutil.copyfile

def copyfile(src, dst, **kwargs):
    global copied
    if Path(dst).resolve().is_relative_to(roots[where].resolve()):
        copied += 1
        if copied == kill_at:
            Path(dst).write_bytes(Path(src).read_bytes()[:10])  # the file being written, torn
            os.kill(os.getpid(), signal.SIGKILL)
    return real_copyfile(src, dst, **kwargs)

shutil.copyfile = copyfile  # what copytree's copy2 calls for each file
registry.promote(artifact, {"accuracy": 99.0})
"""


@pytest.mark.parametrize(("where", "kill_at"), [("staging", 2), ("store", 1), ("store", 3), ("store", 5)])
def test_a_kill_mid_copy_leaves_the_old_champion_and_the_next_promotion_cleans_up(tmp_path, where, kill_at):
    old = registry.promote(_artifact(tmp_path, "a"), {"accuracy": 90.0})
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PROMOTION, str(_artifact(tmp_path, "b", files=3)), where, str(kill_at)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    # the old champion is served, whole; nothing incomplete is listed as a version
    assert str(registry.champion().tag) == old and _name() == '{"name": "a"}'
    assert [str(m.tag) for m in registry.versions()] == [old]
    assert len(registry.broken_versions()) == (1 if where == "store" else 0)
    assert old not in registry.broken_versions()
    # the next promotion removes what the killed one left and succeeds
    new = registry.promote(_artifact(tmp_path, "c"), {"accuracy": 95.0})
    assert registry.broken_versions() == [] and [str(m.tag) for m in registry.versions()] == [old, new]
    assert _name() == '{"name": "c"}' and registry.champion().info.metadata["previous"] == old
    assert not (registry.store_root() / "mmfuse" / "staging").exists()
    assert [r["action"] for r in registry.history()][-1:] == (["clean"] if where == "store" else [])


def test_an_incomplete_latest_is_refused_and_clean_restores_the_last_complete_one(tmp_path):
    first = registry.promote(_artifact(tmp_path, "a"), {})
    second = registry.promote(_artifact(tmp_path, "b"), {})
    weights = Path(bentoml.models.get(second).path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:7])  # as if its copy had been cut short
    assert registry.broken_versions() == [second]
    with pytest.raises(registry.RegistryError, match="mmfuse champion clean"):
        registry.champion()
    assert registry.clean() == [second]
    assert str(registry.champion().tag) == first and _name() == '{"name": "a"}'
    assert registry.clean() == []


def test_rollback_walks_back_the_champion_history(tmp_path):
    a, b, c = (registry.promote(_artifact(tmp_path, n), {"accuracy": 90.0 + i}) for i, n in enumerate("abc"))
    assert registry.champion().info.metadata["previous"] == b
    to_b = registry.rollback()
    assert _name() == '{"name": "b"}' and registry.champion().info.metadata["restored"] == b
    to_a = registry.rollback()  # twice: from the copy of b, one more step back
    assert _name() == '{"name": "a"}' and registry.champion().info.metadata["restored"] == a
    assert len({a, b, c, to_b, to_a}) == 5
    with pytest.raises(registry.RegistryError, match=r"rollback copy of .*first champion's place"):
        registry.rollback()
    assert [(r["action"], r["restored"]) for r in registry.history() if r["action"] == "rollback"] == [
        ("rollback", b),
        ("rollback", a),
    ]
    registry.rollback(to=c)  # any version, by tag
    assert _name() == '{"name": "c"}' and registry.champion().info.metadata["previous"] == b
    registry.rollback()  # from c's place, one step back is b again
    assert _name() == '{"name": "b"}'


def test_rollback_without_champion_or_to_an_unknown_version_is_clear(tmp_path):
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback()
    registry.promote(_artifact(tmp_path, "a"), {})
    with pytest.raises(registry.RegistryError, match="first champion's place"):
        registry.rollback()
    with pytest.raises(registry.RegistryError, match="no complete version"):
        registry.rollback(to="mmfuse:doesnotexist")


def test_a_torn_last_line_of_the_decision_log_is_skipped(tmp_path):
    registry.promote(_artifact(tmp_path, "a"), {})
    registry.log_decision({"action": "promote", "verdict": "promote"})
    with open(registry.decision_log(), "a") as handle:
        handle.write('{"action": "prom')  # a crash mid-append
    assert [r["action"] for r in registry.history()] == ["promote"]


def test_champion_show_names_incomplete_versions_and_the_failed_gates_of_a_rejection(tmp_path):
    from typer.testing import CliRunner

    from mmfuse.cli import app

    first = registry.promote(_artifact(tmp_path, "a"), {"accuracy": 91.0})
    registry.log_decision({"action": "promote", "verdict": "reject", "failed_gates": ["beats_champion", "max_ece"]})
    second = registry.promote(_artifact(tmp_path, "b"), {"accuracy": 92.0})
    (Path(bentoml.models.get(second).path) / "config.json").unlink()  # as an interrupted copy leaves it
    shown = CliRunner().invoke(app, ["champion", "show"], terminal_width=200)
    assert f"incomplete {second}" in shown.output and "mmfuse champion clean" in shown.output
    assert shown.exit_code != 0  # its latest is incomplete: no champion is shown as if it were whole
    cleaned = CliRunner().invoke(app, ["champion", "clean"], terminal_width=200)
    assert cleaned.exit_code == 0 and second in cleaned.output
    shown = CliRunner().invoke(app, ["champion", "show"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert f"champion {first}" in shown.output and "failed: beats_champion, max_ece" in shown.output
    assert "incomplete" not in shown.output


def test_a_challenger_in_shadow_never_moves_the_champion_and_a_promotion_ends_it(tmp_path):
    champion = registry.promote(_artifact(tmp_path, "a"), {})
    assert registry.challenger() is None
    first = registry.shadow(_artifact(tmp_path, "b"), {"accuracy": 93.0})
    second = registry.shadow(_artifact(tmp_path, "c"), {"accuracy": 94.0})  # one challenger at a time
    assert str(registry.challenger().tag) == second and first.startswith(registry.SHADOW_NAME + ":")
    assert (Path(registry.challenger().path) / "config.json").read_text() == '{"name": "c"}'
    assert str(registry.champion().tag) == champion and _name() == '{"name": "a"}'
    assert [str(m.tag) for m in registry.versions()] == [champion]  # a challenger is no champion version
    assert registry.challenger().info.labels[registry.ROLE_LABEL] == "challenger"
    with pytest.raises(registry.RegistryError, match="no complete version"):
        registry.rollback(to=second)
    promoted = registry.promote(_artifact(tmp_path, "c2"), {})
    assert registry.challenger() is None and str(registry.champion().tag) == promoted
    actions = [(r["action"], r.get("removed")) for r in registry.history()]
    assert actions == [("shadow", None), ("shadow", None), ("end_shadow", [second])]
    assert registry.end_shadow("by hand") == []


def test_a_torn_shadow_is_never_served_and_the_next_writer_removes_it(tmp_path):
    registry.promote(_artifact(tmp_path, "a"), {})
    tag = registry.shadow(_artifact(tmp_path, "b", files=2), {})
    (Path(registry.challenger().path) / "part1.bin").write_bytes(b"torn")
    assert registry.challenger() is None and registry.broken_versions() == [tag]
    assert registry.clean() == [tag] and registry.broken_versions() == []
