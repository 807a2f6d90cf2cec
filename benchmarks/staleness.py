"""Staleness: how fast the served model's accuracy decays as the inputs drift, and what that
means for when to retrain.

    python benchmarks/staleness.py [--curves plots/robustness.csv] [--metrics metrics/evaluate.json]

Run after `make run`. avdigits has no time axis, so drift is growing shift severity: the
evaluate stage's robustness curves (every corruption family, seen and unseen, six levels of
growing severity, applied to the raw test media and run through the artifact's own
preprocessing) for the served trust method (`evaluate.trust.method`). For each family it
reports the accuracy lost per severity level and the first level at which the loss passes
`monitor.accuracy_drop` (the drop the monitoring check calls drift), i.e. how much shift the
champion tolerates before it needs retraining. A fixed calendar cadence cannot be read off
this without a rate of drift in the field; what it shows is whether drift-triggered
retraining (the monitoring flow) or the age limit (`monitor.max_champion_age_days`) is the
safeguard that matters. Writes benchmarks/results/staleness.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmfuse.evaluation.corruption import CORRUPTIONS
from mmfuse.io import write_json
from mmfuse.params import load_params

RESULTS = Path(__file__).parent / "results"


def decay(curves: Path, method: str, tolerated_drop: float) -> dict[str, Any]:
    """Per corruption family: accuracy by severity, the loss per level, the first level past the drop."""
    points: dict[str, dict[int, float]] = defaultdict(dict)
    with open(curves) as handle:
        for row in csv.DictReader(handle):
            if row["model"] == method:
                points[row["corruption"]][int(row["severity"])] = float(row["accuracy"])
    seen = {c.name: c.seen for c in CORRUPTIONS}
    families = {}
    for name, by_level in sorted(points.items()):
        clean = by_level[0]
        levels = sorted(by_level)
        past = [level for level in levels if clean - by_level[level] > tolerated_drop * 100]
        families[name] = {
            "seen": seen.get(name),
            "accuracy": [by_level[level] for level in levels],
            "loss_per_level_points": round((clean - by_level[levels[-1]]) / levels[-1], 2),
            "first_level_past_drop": past[0] if past else None,
        }
    tolerated = [f["first_level_past_drop"] for f in families.values() if f["first_level_past_drop"] is not None]
    return {
        "method": method,
        "accuracy_drop_points": tolerated_drop * 100,
        "families": families,
        "families_never_past_drop": sorted(n for n, f in families.items() if f["first_level_past_drop"] is None),
        "earliest_level_past_drop": min(tolerated) if tolerated else None,
        "families_past_drop_at_level_1": sorted(n for n, f in families.items() if f["first_level_past_drop"] == 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, default=Path("plots/robustness.csv"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    args = parser.parse_args()
    method = json.loads(args.metrics.read_text())["trust_method"]
    result = decay(args.curves, method, load_params().monitor.accuracy_drop)
    write_json(RESULTS / "staleness.json", result)
    for name, family in result["families"].items():
        kind = "seen" if family["seen"] else "unseen"
        loss = family["loss_per_level_points"]
        print(f"{name:22s} {kind:6s} -{loss:5.2f} pts/level, past the drop at level {family['first_level_past_drop']}")


if __name__ == "__main__":
    main()
