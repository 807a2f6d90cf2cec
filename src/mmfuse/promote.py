"""The promote stage: challenger vs champion on the same test data, through explicit gates.

Gates are a pure function of two score sets, so each one is testable on constructed
numbers. Whatever the verdict, a decision record says what was compared, every gate's
value and threshold, and why; a failed gate leaves the champion untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from mmfuse import registry
from mmfuse.config import PromoteParams
from mmfuse.io import write_json

Scores = dict[str, Any]  # {"accuracy": %, "subsets": {name: %}, "ece": float}
Scorer = Callable[[Path], Scores]


def _gate(name: str, value: Any, threshold: Any, passed: bool, detail: str) -> dict[str, Any]:
    return {"gate": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail}


def decide(challenger: Scores, champion: Scores | None, validation_passed: bool, params: PromoteParams) -> dict[str, Any]:
    """Evaluate every gate (never stopping at the first failure) and return the verdict."""
    gates = []
    if params.require_validation:
        gates.append(_gate("validation", validation_passed, True, validation_passed, "the validate stage passed for this data"))
    accuracy = challenger["accuracy"]
    gates.append(_gate("min_accuracy", accuracy, params.min_accuracy, accuracy >= params.min_accuracy, "absolute test accuracy (percent)"))
    gates.append(_gate("max_ece", challenger["ece"], params.max_ece, challenger["ece"] <= params.max_ece, "expected calibration error after temperature scaling"))
    if champion is not None:
        needed = champion["accuracy"] + params.margin
        gates.append(_gate("beats_champion", accuracy, round(needed, 4), accuracy >= needed, "accuracy >= champion + margin"))
        for subset, theirs in sorted(champion["subsets"].items()):
            ours = challenger["subsets"].get(subset, 0.0)
            floor = theirs - params.subset_tolerance
            gates.append(_gate(f"subset:{subset}", ours, round(floor, 4), ours >= floor, "no modality subset worse than the champion by more than the tolerance"))
    failed = [g["gate"] for g in gates if not g["passed"]]
    return {
        "verdict": "reject" if failed else "promote",
        "first_promotion": champion is None,
        "failed_gates": failed,
        "gates": gates,
        "challenger": challenger,
        "champion": champion,
    }


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else "absent"


def _changed_files(champion_dir: Path, candidate: Path, calibration_path: Path, reference: Path | None) -> set[str]:
    """Which of the challenger's weights, calibration and (when given) drift reference differ from the champion's.

    Calibration and reference travel beside the weights in the store: a run that keeps the
    weights but changes them (another val split, another monitor.reference_split) must
    still reach the champion.
    """
    pairs = {
        "weights": (champion_dir / "model.safetensors", Path(candidate) / "model.safetensors"),
        "calibration": (champion_dir / "calibration.json", Path(calibration_path)),
    }
    if reference is not None:
        pairs["reference"] = (champion_dir / "reference.parquet", Path(reference))
    return {name for name, (ours, new) in pairs.items() if _file_digest(ours) != _file_digest(new)}


def temperature_of(artifact_dir: Path, default_calibration: Path) -> float:
    """A stored champion carries its own calibration; the challenger's comes from this run's evaluate stage."""
    own = Path(artifact_dir) / "calibration.json"
    source = own if own.exists() else Path(default_calibration)
    return float(json.loads(source.read_text()).get("temperature", 1.0))


def run_promotion(
    candidate: Path,
    calibration_path: Path,
    validation_summary: Path,
    scorer: Scorer,
    params: PromoteParams,
    decision_path: Path,
    reference: Path | None = None,
) -> dict[str, Any]:
    """Score challenger and champion with the same `scorer`, decide, and promote on success.

    The champion in the store carries what serving and monitoring need beside the weights:
    its calibration and, when given, the drift reference profile built from it.
    """
    calibration = json.loads(Path(calibration_path).read_text())
    validation_passed = bool(json.loads(Path(validation_summary).read_text()).get("success"))
    challenger = scorer(candidate)
    current = registry.champion()
    changed = _changed_files(Path(current.path), candidate, calibration_path, reference) if current is not None else None
    same_weights = changed is not None and "weights" not in changed
    # Against itself the model needs no comparison: only the absolute gates judge new companions.
    champion_scores = scorer(Path(current.path)) if current is not None and not same_weights else None
    decision = decide(challenger, champion_scores, validation_passed, params)
    decision["champion_tag"] = str(current.tag) if current is not None else None
    if same_weights and not changed:
        decision.update(verdict="keep", failed_gates=[], detail="the challenger is the champion (weights, calibration, drift reference): nothing to promote")
    elif same_weights and decision["verdict"] == "promote":
        decision["detail"] = (
            "the champion's weights with a new calibration or drift reference: promoted as a new version, "
            "so that serving and monitoring use them"
        )
    if decision["verdict"] == "promote":
        with tempfile.TemporaryDirectory() as staging:
            artifact = Path(staging) / "artifact"
            shutil.copytree(candidate, artifact)
            shutil.copyfile(calibration_path, artifact / "calibration.json")
            if reference is not None:
                shutil.copyfile(reference, artifact / "reference.parquet")
            metadata = {
                "accuracy": challenger["accuracy"],
                "ece": challenger["ece"],
                "subsets": challenger["subsets"],
                "temperature": calibration.get("temperature", 1.0),
                "git_commit": _git_commit(),
                "dvc_lock_sha256": _file_digest(Path("dvc.lock")),
                "preprocessing": json.loads((candidate / "config.json").read_text()).get("preprocessing", {}).get("params", {}),
            }
            decision["promoted_tag"] = registry.promote(artifact, metadata)
    registry.log_decision({"action": "promote", **{k: decision[k] for k in ("verdict", "failed_gates", "champion_tag")}, "promoted_tag": decision.get("promoted_tag")})
    write_json(Path(decision_path), decision)
    return decision
