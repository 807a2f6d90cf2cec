"""Promotion gates on constructed score sets, and the promote stage around the real model store."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from mmfuse.inference import registry
from mmfuse.inference.log import InferenceLog, LogRecord, ShadowEvidence, ShadowRecord
from mmfuse.params.promote import PromoteParams, ShadowParams
from mmfuse.stages.promote import decide, run, shadow_gates

SUBSETS = ("image", "audio", "text", "image+audio", "image+text", "audio+text", "image+audio+text")
PARAMS = PromoteParams(min_accuracy=85.0, margin=0.0, subset_tolerance=1.0, max_ece=0.05)


def scores(accuracy: float = 92.0, ece: float = 0.02, **subsets: float) -> dict:
    base = {name: 60.0 for name in SUBSETS}
    base.update({k.replace("_", "+"): v for k, v in subsets.items()})
    base["image+audio+text"] = accuracy
    return {"accuracy": accuracy, "subsets": base, "ece": ece}


def test_first_promotion_passes_on_absolute_gates():
    decision = decide(scores(), None, True, PARAMS)
    assert decision["verdict"] == "promote" and decision["first_promotion"]
    floors = {f"floor:subset:{name}" for name in SUBSETS}
    assert {g["gate"] for g in decision["gates"]} == {"validation", "min_accuracy", "max_ece", *floors}


@pytest.mark.parametrize(
    ("challenger", "validation", "failed"),
    [
        (scores(accuracy=80.0), True, ["min_accuracy"]),
        (scores(ece=0.2), True, ["max_ece"]),
        (scores(), False, ["validation"]),
        (scores(accuracy=80.0, ece=0.2), False, ["validation", "min_accuracy", "max_ece"]),
    ],
)
def test_each_absolute_gate_fails_on_its_own(challenger, validation, failed):
    decision = decide(challenger, None, validation, PARAMS)
    assert decision["verdict"] == "reject"
    assert decision["failed_gates"] == failed


def test_challenger_must_beat_champion_by_the_margin():
    decision = decide(scores(accuracy=92.0), scores(accuracy=91.5), True, PromoteParams(margin=1.0))
    assert decision["failed_gates"] == ["beats_champion"]
    assert decide(scores(accuracy=92.0), scores(accuracy=91.5), True, PARAMS)["verdict"] == "promote"


def recent(accuracy: float, samples: int = 100) -> dict:
    return {**scores(accuracy=accuracy), "samples": samples}


@pytest.mark.parametrize(
    ("ours", "original", "failed"),
    [
        (85.0, 91.5, []),  # +10 on recent traffic, -0.5 on the original test: the retrain is worth it
        (76.0, 92.5, ["recent_traffic_improves"]),  # better on the original test, not on today's traffic
        (85.0, 90.5, ["original_test_holds"]),  # forgot the original task by more than the tolerance
    ],
)
def test_with_recent_traffic_the_challenger_gains_there_and_holds_the_original_test(ours, original, failed):
    params = PromoteParams(recent_margin=2.0, original_tolerance=1.0, min_recent=30, subset_tolerance=5.0)
    decision = decide(
        scores(accuracy=original), scores(accuracy=92.0), True, params, recent=(recent(ours), recent(75.0))
    )
    assert decision["failed_gates"] == failed
    assert "beats_champion" not in {g["gate"] for g in decision["gates"]}
    assert decision["recent_traffic"]["judged"]
    assert decision["recent_traffic"]["challenger"]["subsets"]["image+audio+text"] == ours  # listed per subset


def test_too_little_recent_traffic_falls_back_to_beating_the_champion_on_test():
    params = PromoteParams(min_recent=30)
    decision = decide(
        scores(accuracy=91.0), scores(accuracy=92.0), True, params, recent=(recent(99.0, 29), recent(50.0, 29))
    )
    assert decision["failed_gates"] == ["beats_champion"] and not decision["recent_traffic"]["judged"]


def test_a_simpler_model_as_good_as_the_challenger_is_named_and_wins():
    """ML Test Score M5: the late-fusion reference scored 93.15 beside the fusion model's 93.1."""
    baselines = {"late_fusion": 93.15, "image+audio": 89.5}
    decision = decide(scores(accuracy=93.1), None, True, PARAMS, baselines)
    assert decision["verdict"] == "reject" and decision["failed_gates"] == ["beats_baseline:late_fusion"]
    assert decision["simpler_model"] == "late_fusion" and "the simpler model late_fusion" in decision["detail"]
    gate = next(g for g in decision["gates"] if g["gate"] == "beats_baseline:image+audio")
    assert gate["passed"] and gate["value"] == 93.1 and gate["threshold"] == 89.5
    assert decide(scores(accuracy=93.2), None, True, PARAMS, baselines)["verdict"] == "promote"
    margin = PARAMS.model_copy(update={"baseline_margin": 0.5})
    failed = decide(scores(accuracy=93.2), None, True, margin, baselines)["failed_gates"]
    assert failed == ["beats_baseline:late_fusion"]


def test_slice_floors_apply_at_the_first_promotion_too():
    challenger = scores(accuracy=93.0, text=25.0) | {
        "classes": {"zero": 95.0, "one": 79.5},
        "speakers": {"george": 96.0, "theo": 70.0},
    }
    decision = decide(challenger, None, True, PARAMS)
    assert decision["first_promotion"] and decision["verdict"] == "reject"
    assert decision["failed_gates"] == ["floor:subset:text", "floor:class:one", "floor:speaker:theo"]
    per_subset = PARAMS.model_copy(update={"subset_floors": {"text": 20.0, "image": 65.0}})
    assert decide(challenger, None, True, per_subset)["failed_gates"] == [
        "floor:subset:image",
        "floor:class:one",
        "floor:speaker:theo",
    ]


def test_a_subset_regression_beyond_tolerance_fails():
    champion = scores(accuracy=91.0, audio=70.0)
    decision = decide(scores(accuracy=93.0, audio=68.5), champion, True, PARAMS)
    assert decision["failed_gates"] == ["subset:audio"]
    gate = next(g for g in decision["gates"] if g["gate"] == "subset:audio")
    assert gate["value"] == 68.5 and gate["threshold"] == 69.0
    assert decide(scores(accuracy=93.0, audio=69.5), champion, True, PARAMS)["verdict"] == "promote"


@pytest.fixture
def stage_inputs(tmp_path, empty_store):
    """Stage inputs beside an empty model store (see `empty_store`)."""
    calibration = tmp_path / "calibration.json"
    calibration.write_text('{"temperature": 1.5}')
    (tmp_path / "params.yaml").write_text("train:\n  fusion: gated\n")
    summary = tmp_path / "validation.json"
    summary.write_text('{"success": true}')
    return tmp_path, calibration, summary


def run_promotion(
    candidate: Path,
    calibration: Path,
    validation: Path,
    scorer,
    params,
    decision: Path,
    reference: Path | None = None,
    experiment: str | None = None,
    evaluation: Path | None = None,
    inference_log: Path | None = None,
) -> dict:
    return run(
        candidate=candidate,
        calibration=calibration,
        validation=validation,
        decision=decision,
        params=params,
        scorer=scorer,
        reference=reference,
        experiment=experiment,
        params_file=calibration.parent / "params.yaml",
        evaluation=evaluation,
        inference_log=inference_log,
    )


def _candidate(folder: Path, weights: bytes) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    config = {"preprocessing": {"params": {"image": {"size": 28}}}, "train": {"fusion": "gated", "lr": 0.003}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_stage_promotes_then_keeps_champion_when_challenger_is_worse(stage_inputs):
    tmp_path, calibration, summary = stage_inputs
    results = {b"A": scores(accuracy=92.0), b"B": scores(accuracy=88.0)}
    scorer = lambda artifact: results[(artifact / "model.safetensors").read_bytes()]  # noqa: E731

    reference = tmp_path / "reference.parquet"
    reference.write_bytes(b"profile")
    first = run_promotion(
        _candidate(tmp_path / "good", b"A"), calibration, summary, scorer, PARAMS, tmp_path / "d1.json", reference
    )
    assert first["verdict"] == "promote"
    champion = registry.champion()
    assert (Path(champion.path) / "reference.parquet").read_bytes() == b"profile"
    assert str(champion.tag) == first["promoted_tag"]
    assert json.loads((Path(champion.path) / "calibration.json").read_text())["temperature"] == 1.5
    assert champion.info.metadata["preprocessing"] == {"image": {"size": 28}}

    second = run_promotion(
        _candidate(tmp_path / "worse", b"B"), calibration, summary, scorer, PARAMS, tmp_path / "d2.json"
    )
    assert second["verdict"] == "reject"
    assert second["failed_gates"] == ["beats_champion", "subset:image+audio+text"]
    assert str(registry.champion().tag) == first["promoted_tag"]
    record = json.loads((tmp_path / "d2.json").read_text())
    assert record["champion"]["accuracy"] == 92.0 and record["challenger"]["accuracy"] == 88.0
    assert [h["verdict"] for h in registry.history()] == ["promote", "reject"]


def test_stage_keeps_an_identical_challenger(stage_inputs):
    tmp_path, calibration, summary = stage_inputs
    scorer = lambda artifact: scores()  # noqa: E731
    run_promotion(_candidate(tmp_path / "a", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d1.json")
    again = run_promotion(
        _candidate(tmp_path / "b", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d2.json"
    )
    assert again["verdict"] == "keep"
    assert len(registry.versions()) == 1


def test_the_same_weights_with_a_new_calibration_or_reference_become_a_new_version(stage_inputs):
    tmp_path, calibration, summary = stage_inputs
    scorer = lambda artifact: scores()  # noqa: E731
    reference = tmp_path / "reference.parquet"
    reference.write_bytes(b"profile of val")
    first = run_promotion(
        _candidate(tmp_path / "a", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d1.json", reference
    )
    reference.write_bytes(b"profile of test")  # e.g. monitor.reference_split changed, the model did not
    refreshed = run_promotion(
        _candidate(tmp_path / "b", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d2.json", reference
    )
    assert refreshed["verdict"] == "promote" and "new calibration, trust or drift reference" in refreshed["detail"]
    assert refreshed["champion"] is None  # judged on the absolute gates only: the model is the same
    assert (Path(registry.champion().path) / "reference.parquet").read_bytes() == b"profile of test"
    calibration.write_text('{"temperature": 0.9}')
    recalibrated = run_promotion(
        _candidate(tmp_path / "c", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d3.json", reference
    )
    assert recalibrated["verdict"] == "promote"
    assert json.loads((Path(registry.champion().path) / "calibration.json").read_text())["temperature"] == 0.9
    again = run_promotion(
        _candidate(tmp_path / "d", b"same"), calibration, summary, scorer, PARAMS, tmp_path / "d4.json", reference
    )
    assert again["verdict"] == "keep"
    assert len(registry.versions()) == 3 and first["promoted_tag"] != recalibrated["promoted_tag"]


def test_an_experiment_decides_but_does_not_promote_unless_asked(stage_inputs):
    """`dvc exp run` once wrote its model into the store as champion with HEAD's lineage."""
    tmp_path, calibration, summary = stage_inputs
    results = {b"A": scores(accuracy=90.0), b"B": scores(accuracy=93.0)}
    scorer = lambda artifact: results[(artifact / "model.safetensors").read_bytes()]  # noqa: E731
    first = run_promotion(_candidate(tmp_path / "a", b"A"), calibration, summary, scorer, PARAMS, tmp_path / "d1.json")
    assert first["verdict"] == "promote" and "experiment" not in registry.champion().info.metadata
    held = run_promotion(
        _candidate(tmp_path / "b", b"B"), calibration, summary, scorer, PARAMS, tmp_path / "d2.json", experiment="wide"
    )
    assert held["verdict"] == "experiment" and held["failed_gates"] == [] and "dvc exp apply wide" in held["detail"]
    assert str(registry.champion().tag) == first["promoted_tag"] and len(registry.versions()) == 1
    assert json.loads((tmp_path / "d2.json").read_text())["verdict"] == "experiment"
    allowed = run_promotion(
        _candidate(tmp_path / "c", b"B"),
        calibration,
        summary,
        scorer,
        PARAMS.model_copy(update={"from_experiments": True}),
        tmp_path / "d3.json",
        experiment="wide",
    )
    assert allowed["verdict"] == "promote"
    lineage = registry.champion().info.metadata
    assert lineage["experiment"] == "wide" and lineage["train"] == {"fusion": "gated", "lr": 0.003}
    assert lineage["params_sha256"] == hashlib.sha256((tmp_path / "params.yaml").read_bytes()).hexdigest()


def test_the_stage_takes_baselines_and_speakers_from_the_evaluate_metrics(stage_inputs):
    tmp_path, calibration, summary = stage_inputs
    evaluation = tmp_path / "evaluate.json"
    models = {"fused": 92.0, "late_fusion": 92.5, "audio": 70.0, "image+audio": 89.0}
    evaluation.write_text(
        json.dumps(
            {
                "models": {name: {"accuracy": acc} for name, acc in models.items()},
                "speakers": {"george": {"fused": 95.0}, "theo": {"fused": 79.0}},
            }
        )
    )
    scorer = lambda artifact: scores(accuracy=92.0)  # noqa: E731
    candidate = _candidate(tmp_path / "a", b"A")
    record = run_promotion(candidate, calibration, summary, scorer, PARAMS, tmp_path / "d.json", evaluation=evaluation)
    assert record["verdict"] == "reject" and registry.champion() is None
    assert record["baselines"] == {"image+audio": 89.0, "late_fusion": 92.5}
    assert record["simpler_model"] == "late_fusion"
    assert record["failed_gates"] == ["beats_baseline:late_fusion", "floor:speaker:theo"]
    assert json.loads((tmp_path / "d.json").read_text())["gates"] == record["gates"]


SHADOW = ShadowParams(require=True, min_requests=4, min_agreement=75.0, min_feedback=2, min_live_accuracy=50.0)


def evidence(requests: int, agreed: int, labelled: int, challenger: int, champion: int) -> ShadowEvidence:
    return ShadowEvidence("mmfuse:a", "mmfuse-shadow:b", requests, agreed, 0, labelled, challenger, champion)


@pytest.mark.parametrize(
    ("seen", "failed"),
    [
        (evidence(4, 3, 2, 2, 2), []),
        (evidence(3, 3, 2, 2, 2), ["shadow_requests"]),
        (evidence(4, 4, 0, 0, 0), ["shadow_feedback", "shadow_live_accuracy", "shadow_vs_champion_live"]),
        (evidence(4, 2, 2, 2, 2), ["shadow_agreement"]),
        (evidence(10, 9, 10, 6, 8), ["shadow_vs_champion_live"]),  # 60 % live vs the champion's 80 %
        (evidence(10, 9, 10, 4, 4), ["shadow_live_accuracy"]),
    ],
)
def test_each_shadow_gate_fails_on_its_own(seen, failed):
    gates = shadow_gates(seen, SHADOW)
    assert [g["gate"] for g in gates if not g["passed"]] == failed


def _traffic(path: Path, champion: str, challenger: str, answers: list[tuple[str, str, str]]) -> None:
    """Requests the champion answered, the challenger's shadow answers, and feedback."""
    log = InferenceLog(path, max_rows=1000, queue_size=100, max_age_days=90)
    for k, (ours, theirs, _) in enumerate(answers):
        row = LogRecord(
            f"{challenger}-{k}",
            1.0e9 + k,
            "predict",
            champion,
            (True, False, False),
            {},
            np.zeros(2),
            ours,
            0.9,
            {ours: 0.9},
            1.0,
        )
        log.record(row)
        log.record(ShadowRecord(f"{challenger}-{k}", 1.0e9 + k, challenger, theirs, 0.8))
    log.flush()
    for k, (_, _, truth) in enumerate(answers):
        log.feedback(f"{challenger}-{k}", truth)
    log.close()


def test_with_shadow_required_a_passing_challenger_waits_for_live_evidence(stage_inputs, monkeypatch):
    tmp_path, calibration, summary = stage_inputs
    monkeypatch.setattr(time, "time", lambda: 1.0e9 + 100)  # the log's age limit is measured from now
    results = {b"A": scores(accuracy=90.0), b"B": scores(accuracy=93.0), b"C": scores(accuracy=94.0)}
    scorer = lambda artifact: results[(artifact / "model.safetensors").read_bytes()]  # noqa: E731
    params = PARAMS.model_copy(update={"shadow": SHADOW})
    log = tmp_path / "log.sqlite"

    def promote(name: str, weights: bytes) -> dict:
        candidate = tmp_path / name
        if not candidate.exists():
            _candidate(candidate, weights)
        return run_promotion(
            candidate, calibration, summary, scorer, params, tmp_path / f"{name}.json", inference_log=log
        )

    first = promote("a", b"A")
    assert first["verdict"] == "promote"  # the first champion has nothing to be compared with live
    champion = first["promoted_tag"]
    put = promote("b", b"B")
    assert put["verdict"] == "shadow" and str(registry.champion().tag) == champion
    challenger = put["shadow_tag"]
    assert str(registry.challenger().tag) == challenger
    waiting = promote("b", b"B")  # no traffic yet
    assert waiting["verdict"] == "shadow" and waiting["failed_gates"][:2] == ["shadow_requests", "shadow_feedback"]
    assert str(registry.challenger().tag) == challenger and "0/4 requests" in waiting["detail"]

    _traffic(
        log,
        champion,
        challenger,
        [("one", "one", "one"), ("two", "two", "two"), ("one", "one", "zero"), ("zero", "one", "one")],
    )
    switched = promote("b", b"B")
    assert switched["verdict"] == "promote" and switched["shadow"]["agreement"] == 75.0
    assert switched["shadow"]["challenger_accuracy"] == 75.0 and switched["shadow"]["champion_accuracy"] == 50.0
    assert str(registry.champion().tag) == switched["promoted_tag"] and registry.challenger() is None

    put = promote("c", b"C")  # the next challenger disagrees too often
    _traffic(log, switched["promoted_tag"], put["shadow_tag"], [("one", "two", "one")] * 4)
    rejected = promote("c", b"C")
    assert rejected["verdict"] == "reject" and "shadow_agreement" in rejected["failed_gates"]
    assert str(registry.champion().tag) == switched["promoted_tag"]
    assert [h["verdict"] for h in registry.history() if h["action"] == "promote"] == [
        "promote",
        "shadow",
        "shadow",
        "promote",
        "shadow",
        "reject",
    ]
