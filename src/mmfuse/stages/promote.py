"""Stage 7, promote: challenger vs champion on the same test data, through explicit gates.

Gates are a pure function of two score sets, so each one is testable on constructed
numbers. Whatever the verdict, a decision record says what was compared, every gate's
value and threshold, and why; a failed gate leaves the champion untouched.

An experiment (`dvc exp run`, which DVC marks with $DVC_EXP_NAME) decides but does not
publish: it trained what its own params say, and production must not change because someone
tried an idea. Its record says what it would have done; `promote.from_experiments` opts in.

Where the data hold a recent-traffic test set (split test_recent: harvested traffic held out,
`mmfuse harvest`) of at least `promote.min_recent` samples, both models are scored on it too,
and "beats the champion" becomes: gains `recent_margin` points there, and loses at most
`original_tolerance` on the original test split. A model retrained for today's traffic is
promoted for doing better on it, as long as it has not forgotten the original task.

With `promote.shadow.require` a challenger that passes every offline gate does not switch
at once: it is served in shadow beside the champion (verdict "shadow") and the next
decision (`mmfuse champion repromote`, once the service has scored enough traffic with it) adds
the shadow gates, on what the inference log holds for exactly this champion and challenger.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from mmfuse.data.manifest import RECENT_SPLIT, dataset_manifest
from mmfuse.evaluation.predict import FUSED, REFERENCE
from mmfuse.evaluation.scoring import score_artifact
from mmfuse.inference import registry
from mmfuse.inference.log import LogLocation, ShadowEvidence, log_path, shadow_evidence
from mmfuse.io import write_json
from mmfuse.models.artifact import CALIBRATION, REFERENCE_FILE, WEIGHTS, read_temperature
from mmfuse.models.data import has_split
from mmfuse.models.trust import TRUST
from mmfuse.params import load_params
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.params.promote import PromoteParams, ShadowParams
from mmfuse.stages import console, stage_cli

EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for every stage it runs
Scores = dict[str, Any]  # {"accuracy": %, "subsets": {name: %}, "ece": float}
Scorer = Callable[[Path], Scores]


def _gate(name: str, value: Any, threshold: Any, passed: bool, detail: str) -> dict[str, Any]:
    return {"gate": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail}


def _floor_gates(challenger: Scores, params: PromoteParams) -> list[dict[str, Any]]:
    """Absolute floors per modality subset, class and speaker: checked at every promotion, the first included.

    A subset's floor is its entry in promote.subset_floors, else min_subset_accuracy.
    """
    floors = {
        "subset": ("subsets", lambda name: params.subset_floors.get(name, params.min_subset_accuracy)),
        "class": ("classes", lambda name: params.min_class_accuracy),
        "speaker": ("speakers", lambda name: params.min_speaker_accuracy),
    }
    return [
        _gate(f"floor:{kind}:{name}", value, floor(name), value >= floor(name), f"{kind} accuracy >= its floor")
        for kind, (key, floor) in floors.items()
        for name, value in sorted(challenger.get(key, {}).items())
    ]


def _baseline_gates(accuracy: float, baselines: dict[str, float], params: PromoteParams) -> list[dict[str, Any]]:
    """The challenger against the simpler models it must beat: the best dedicated model and the late-fusion
    reference of the unimodal models (ML Test Score M5: a simpler model that does as well wins)."""
    return [
        {
            **_gate(
                f"beats_baseline:{name}",
                accuracy,
                round(theirs + params.baseline_margin, 4),
                accuracy >= theirs + params.baseline_margin,
                "accuracy >= this simpler model's + promote.baseline_margin",
            ),
            "baseline": name,
        }
        for name, theirs in sorted(baselines.items())
    ]


def simpler_baselines(evaluation: dict[str, Any]) -> dict[str, float]:
    """From the evaluate stage's metrics: the best dedicated (unimodal or pair) model and the late-fusion reference."""
    models = {name: m["accuracy"] for name, m in evaluation["models"].items() if name != FUSED}
    dedicated = {name: acc for name, acc in models.items() if name != REFERENCE}
    found = {REFERENCE: models[REFERENCE]} if REFERENCE in models else {}
    if dedicated:
        best = max(dedicated, key=dedicated.get)
        found[best] = dedicated[best]
    return found


def _champion_gates(
    accuracy: float, champion: Scores, recent: tuple[Scores, Scores] | None, params: PromoteParams
) -> list[dict[str, Any]]:
    """Beat the champion on the original test split or, with recent traffic to judge on (challenger's
    and champion's scores there), gain on it while holding the original test within the tolerance."""
    if recent is None:
        needed = champion["accuracy"] + params.margin
        return [
            _gate("beats_champion", accuracy, round(needed, 4), accuracy >= needed, "accuracy >= champion + margin")
        ]
    ours, theirs = recent[0]["accuracy"], recent[1]["accuracy"]
    needed, floor = theirs + params.recent_margin, champion["accuracy"] - params.original_tolerance
    return [
        _gate(
            "recent_traffic_improves",
            ours,
            round(needed, 4),
            ours >= needed,
            "accuracy on the recent-traffic test set >= champion's there + recent_margin",
        ),
        _gate(
            "original_test_holds",
            accuracy,
            round(floor, 4),
            accuracy >= floor,
            "accuracy on the original test split >= champion's - original_tolerance",
        ),
    ]


def decide(
    challenger: Scores,
    champion: Scores | None,
    validation_passed: bool,
    params: PromoteParams,
    baselines: dict[str, float] | None = None,
    recent: tuple[Scores, Scores | None] | None = None,
) -> dict[str, Any]:
    """Evaluate every gate (never stopping at the first failure) and return the verdict.

    `challenger` may carry "classes" and "speakers" ({name: accuracy}) beside "subsets":
    each gets its floor. `baselines` ({simpler model: accuracy}) must be beaten by the
    margin; when one is not, the record names it as `simpler_model`. `recent`: the challenger's
    and the champion's scores on the recent-traffic test set, which judge the challenger against
    the champion when it holds `params.min_recent` samples or more.
    """
    gates = []
    if params.require_validation:
        gates.append(
            _gate("validation", validation_passed, True, validation_passed, "the validate stage passed for this data")
        )
    accuracy = challenger["accuracy"]
    gates.append(
        _gate(
            "min_accuracy",
            accuracy,
            params.min_accuracy,
            accuracy >= params.min_accuracy,
            "absolute test accuracy (percent)",
        )
    )
    gates.append(
        _gate(
            "max_ece",
            challenger["ece"],
            params.max_ece,
            challenger["ece"] <= params.max_ece,
            "expected calibration error after temperature scaling",
        )
    )
    judged_recent = recent is not None and recent[1] is not None and recent[0]["samples"] >= params.min_recent
    if champion is not None:
        gates += _champion_gates(accuracy, champion, recent if judged_recent else None, params)
        for subset, theirs in sorted(champion["subsets"].items()):
            ours = challenger["subsets"].get(subset, 0.0)
            floor = theirs - params.subset_tolerance
            gates.append(
                _gate(
                    f"subset:{subset}",
                    ours,
                    round(floor, 4),
                    ours >= floor,
                    "no modality subset worse than the champion by more than the tolerance",
                )
            )
    gates += _baseline_gates(accuracy, baselines or {}, params)
    gates += _floor_gates(challenger, params)
    failed = [g["gate"] for g in gates if not g["passed"]]
    record = {
        "verdict": "reject" if failed else "promote",
        "first_promotion": champion is None,
        "failed_gates": failed,
        "gates": gates,
        "challenger": challenger,
        "champion": champion,
        "baselines": baselines or {},
    }
    if recent is not None:
        record["recent_traffic"] = {
            "challenger": recent[0],
            "champion": recent[1],
            "judged": judged_recent,
            "detail": (
                f"{recent[0]['samples']} held-out samples of harvested traffic "
                f"(judged from promote.min_recent: {params.min_recent})"
            ),
        }
    beaten_by = [g["baseline"] for g in gates if "baseline" in g and not g["passed"]]
    if beaten_by:
        simpler = max(beaten_by, key=lambda name: baselines[name])
        record["simpler_model"] = simpler
        record["detail"] = (
            f"the simpler model {simpler} ({baselines[simpler]} %) is as good as the challenger ({accuracy} %) "
            "within promote.baseline_margin: prefer it, or improve the fusion model"
        )
    return record


WAITING_GATES = ("shadow_requests", "shadow_feedback")  # failing one means: not enough traffic yet, wait


def shadow_gates(evidence: ShadowEvidence, params: ShadowParams) -> list[dict[str, Any]]:
    """The canary's gates on live traffic: enough requests and feedback, agreement with the
    champion, and live accuracy both absolute and against the champion on the same requests."""
    ours, theirs = evidence.challenger_accuracy, evidence.champion_accuracy
    return [
        _gate(
            "shadow_requests",
            evidence.requests,
            params.min_requests,
            evidence.requests >= params.min_requests,
            "champion requests the challenger also scored in shadow",
        ),
        _gate(
            "shadow_feedback",
            evidence.labelled,
            params.min_feedback,
            evidence.labelled >= params.min_feedback,
            "of them, requests with feedback (the true label)",
        ),
        _gate(
            "shadow_agreement",
            evidence.agreement,
            params.min_agreement,
            evidence.agreement is not None and evidence.agreement >= params.min_agreement,
            "percent of shadowed requests given the champion's label (no answer counts as a disagreement)",
        ),
        _gate(
            "shadow_live_accuracy",
            ours,
            params.min_live_accuracy,
            ours is not None and ours >= params.min_live_accuracy,
            "the challenger's accuracy on the labelled shadowed requests",
        ),
        _gate(
            "shadow_vs_champion_live",
            ours,
            None if theirs is None else round(theirs - params.live_tolerance, 4),
            ours is not None and theirs is not None and ours >= theirs - params.live_tolerance,
            "live accuracy >= the champion's on the same requests - promote.shadow.live_tolerance",
        ),
    ]


def _through_shadow(
    record: dict[str, Any],
    candidate: Path,
    companions: dict[str, Path],
    metadata: dict[str, Any],
    params: ShadowParams,
    inference_log: LogLocation,
) -> dict[str, Any]:
    """A challenger that passed offline: put it in shadow, or judge what its shadow showed.

    It is "the same challenger" when the shadow copy holds the same weights and companions;
    anything else replaces the shadow and starts the evidence afresh.
    """
    champion_tag = record["champion_tag"]
    shadowed = registry.challenger()
    if shadowed is None or _changed_files(Path(shadowed.path), candidate, companions):
        tag = registry.shadow(candidate, metadata, companions)
        return {
            **record,
            "verdict": "shadow",
            "shadow_tag": tag,
            "detail": (
                f"passed every offline gate; {tag} is now scored in shadow beside {champion_tag} (a running service "
                f"picks it up within serve.reload_interval_s). Once {params.min_requests} requests and "
                f"{params.min_feedback} labels have come, "
                "`mmfuse champion repromote` decides on the live evidence."
            ),
        }
    evidence = shadow_evidence(inference_log, champion_tag, str(shadowed.tag))
    gates = shadow_gates(evidence, params)
    failed = [g["gate"] for g in gates if not g["passed"]]
    record = {
        **record,
        "gates": record["gates"] + gates,
        "failed_gates": record["failed_gates"] + failed,
        "shadow_tag": str(shadowed.tag),
        "shadow": evidence.to_dict(),
    }
    if set(failed) & set(WAITING_GATES):  # too little evidence yet to judge the rest on
        record.update(
            verdict="shadow",
            detail=(
                f"{shadowed.tag} is still in shadow: {evidence.requests}/{params.min_requests} requests, "
                f"{evidence.labelled}/{params.min_feedback} with feedback; rerun `mmfuse champion repromote` later"
            ),
        )
    elif failed:
        record.update(verdict="reject", detail=f"{shadowed.tag} fell short in shadow: {', '.join(failed)}")
    return record


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else "absent"


def _changed_files(champion_dir: Path, candidate: Path, companions: dict[str, Path]) -> set[str]:
    """Which of the challenger's weights and companion files (calibration, trust, drift reference)
    differ from the champion's, by file name ("weights" for the weights).

    The companions travel beside the weights in the store: a run that keeps the weights but
    changes one (another val split, another monitor.reference_split) must still reach the champion.
    """
    pairs = {"weights": (champion_dir / WEIGHTS, Path(candidate) / WEIGHTS)}
    pairs.update({name: (champion_dir / name, Path(path)) for name, path in companions.items()})
    return {name for name, (ours, new) in pairs.items() if _file_digest(ours) != _file_digest(new)}


def run(
    *,
    candidate: Path,
    calibration: Path,
    validation: Path,
    decision: Path,
    params: PromoteParams,
    scorer: Scorer,
    reference: Path | None = None,
    trust: Path | None = None,
    experiment: str | None = None,
    params_file: Path = Path("params.yaml"),
    evaluation: Path | None = None,
    inference_log: LogLocation | None = None,
    recent_scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Score challenger and champion with the same `scorer` (and `recent_scorer`, on the
    recent-traffic test set where the data have one), decide, and promote on success.

    The champion in the store carries what serving and monitoring need beside the weights:
    its calibration and, when given, its trust and the drift reference profile built from it. The
    decision record goes to `decision` whatever the verdict. Inside the experiment `experiment`
    a passing challenger is held back (verdict "experiment") unless `params.from_experiments`.
    `evaluation` (the evaluate stage's metrics of this candidate) supplies the simpler
    models the challenger must beat and its per-speaker accuracies, which get floors.
    The lineage stored with a champion names what was trained: the experiment, the digest
    of the params file the run read and the candidate's own training params. `inference_log`
    (default: the service's) holds the shadow evidence `params.shadow` judges.
    """
    candidate, calibration_path = Path(candidate), Path(calibration)
    companions = {CALIBRATION: calibration_path, TRUST: trust, REFERENCE_FILE: reference}
    companions = {name: Path(path) for name, path in companions.items() if path is not None}
    temperature = read_temperature(candidate, calibration_path)
    validation_passed = bool(json.loads(Path(validation).read_text()).get("success"))
    challenger = scorer(candidate)
    baselines = None
    if evaluation is not None:
        evaluated = json.loads(Path(evaluation).read_text())
        baselines = simpler_baselines(evaluated)
        challenger["speakers"] = {name: s["fused"] for name, s in evaluated.get("speakers", {}).items()}
    current = registry.champion()
    changed = _changed_files(Path(current.path), candidate, companions) if current is not None else None
    same_weights = changed is not None and "weights" not in changed
    # Against itself the model needs no comparison: only the absolute gates judge new companions.
    compared = current is not None and not same_weights
    champion_scores = scorer(Path(current.path)) if compared else None
    recent = None
    if recent_scorer is not None:
        recent = (recent_scorer(candidate), recent_scorer(Path(current.path)) if compared else None)
    record = decide(challenger, champion_scores, validation_passed, params, baselines, recent)
    record["champion_tag"] = str(current.tag) if current is not None else None
    if same_weights and not changed:
        record.update(
            verdict="keep",
            failed_gates=[],
            detail="the challenger is the champion (weights, calibration, trust, drift reference): nothing to promote",
        )
    elif same_weights and record["verdict"] == "promote":
        record["detail"] = (
            "the champion's weights with a new calibration, trust or drift reference: promoted as a new version, "
            "so that serving and monitoring use them"
        )
    if experiment is not None and record["verdict"] == "promote" and not params.from_experiments:
        record.update(
            verdict="experiment",
            experiment=experiment,
            detail=(
                f"experiment {experiment} passed every gate but does not promote: `dvc exp apply {experiment}` then "
                "`dvc repro` (or set promote.from_experiments: true) to make it the champion"
            ),
        )
    config = json.loads((candidate / "config.json").read_text())
    metadata = {
        "accuracy": challenger["accuracy"],
        "ece": challenger["ece"],
        "subsets": challenger["subsets"],
        "temperature": temperature,
        "git_commit": _git_commit(),
        "dvc_lock_sha256": _file_digest(Path("dvc.lock")),
        "params_sha256": _file_digest(Path(params_file)),
        "experiment": experiment,
        "train": config.get("train", {}),
        "preprocessing": config.get("preprocessing", {}).get("params", {}),
    }
    if record["verdict"] == "promote" and params.shadow.require and current is not None:
        record = _through_shadow(record, candidate, companions, metadata, params.shadow, inference_log or log_path())
    if record["verdict"] == "promote":
        record["promoted_tag"] = registry.promote(candidate, metadata, companions)
    registry.log_decision(
        {
            "action": "promote",
            **{k: record[k] for k in ("verdict", "failed_gates", "champion_tag")},
            "promoted_tag": record.get("promoted_tag"),
            "shadow_tag": record.get("shadow_tag"),
        }
    )
    write_json(Path(decision), record)
    return record


def split_scorer(
    processed: Path, calibration: Path, params: EvaluateParams, raw_manifest: Path | None, split: str = "test"
) -> Scorer:
    """Scores an artifact on one split, through its own preprocessing (from `raw_manifest` when it is
    not the processed data's) and with its own temperature (this run's for the challenger)."""

    def scorer(artifact: Path) -> Scores:
        return score_artifact(artifact, processed, split, read_temperature(artifact, calibration), params, raw_manifest)

    return scorer


def main(
    candidate: Path = typer.Option(..., help="The challenger artifact."),
    processed: Path = typer.Option(..., help="The processed splits: both models are scored on its test split."),
    calibration: Path = typer.Option(..., help="The challenger's calibration.json (the evaluate stage's)."),
    validation: Path = typer.Option(..., help="The validate stage's summary: promotion requires it passed."),
    reference: Path = typer.Option(..., help="The drift reference that travels with the champion."),
    trust: Path = typer.Option(..., help="The challenger's trust.safetensors (the evaluate stage's)."),
    evaluation: Path = typer.Option(..., help="The evaluate stage's metrics: baselines to beat, per-speaker results."),
    raw: Optional[Path] = typer.Option(
        None, help="The ingested datasets: a champion with other preprocessing is scored from their media."
    ),
    decision: Path = typer.Option(..., help="Where the decision record goes."),
) -> None:
    """Stage 7: challenger vs champion through the gates; the winner becomes the champion."""
    params = load_params()
    raw_manifest = dataset_manifest(params.data, raw) if raw is not None else None
    record = run(
        candidate=candidate,
        calibration=calibration,
        validation=validation,
        decision=decision,
        params=params.promote,
        scorer=split_scorer(processed, calibration, params.evaluate, raw_manifest),
        recent_scorer=(
            split_scorer(processed, calibration, params.evaluate, raw_manifest, RECENT_SPLIT)
            if has_split(processed, RECENT_SPLIT)
            else None
        ),
        reference=reference,
        trust=trust,
        experiment=os.environ.get(EXPERIMENT_ENV),
        evaluation=evaluation,
    )
    if record["verdict"] == "promote":
        console.print(f"[green]promoted[/] {record['promoted_tag']}")
    elif record["verdict"] in ("keep", "experiment", "shadow"):
        console.print(f"[yellow]kept[/] {record['champion_tag']}: {record['detail']}")
    else:
        console.print(
            f"[yellow]champion kept[/] ({record['champion_tag']}): failed gate(s) {', '.join(record['failed_gates'])}"
        )


if __name__ == "__main__":
    stage_cli(main)
