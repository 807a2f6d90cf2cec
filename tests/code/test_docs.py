"""docs/ml_test_score.md stays true: every test it cites exists, and its totals are its rows' sums."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCORE = ROOT / "docs" / "ml_test_score.md"


def _defined_tests() -> set[str]:
    files = (ROOT / "tests").rglob("test_*.py")
    return {name for path in files for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}


def test_every_test_the_score_cites_exists() -> None:
    cited = set(re.findall(r"`(test_\w+)`", SCORE.read_text()))
    assert len(cited) > 20
    assert cited <= _defined_tests(), sorted(cited - _defined_tests())


def test_the_section_totals_and_the_final_score_are_the_sums_of_the_rows() -> None:
    text = SCORE.read_text()
    sections = {"Data": "D", "Model development": "M", "ML infrastructure": "I", "Monitoring": "Mo"}
    totals = {}
    for name, prefix in sections.items():
        rows = re.findall(rf"^\| {prefix}(\d) [^|]+\| ([\d.]+) \|", text, re.M)
        assert [int(n) for n, _ in rows] == list(range(1, 8)), name  # the rubric's seven tests, in order
        totals[name] = sum(float(score) for _, score in rows)
        assert re.search(rf"^\| {name} \| {totals[name]} \|", text, re.M), (name, totals[name])
    assert re.search(rf"^\| \*\*Final \(lowest\)\*\* \| \*\*{min(totals.values())}\*\* \|", text, re.M)
