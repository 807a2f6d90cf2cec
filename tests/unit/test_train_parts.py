"""The two training stages: the unimodal one depends on exactly the knobs its models read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmfuse.errors import ConfigError
from mmfuse.params.train import ArchParams, TrainParams
from mmfuse.training.jobs import FUSION_ARCH_KNOBS, FUSION_KNOBS, training_jobs, unimodal_params

ROOT = Path(__file__).resolve().parents[2]


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_unimodal_stage_declares_every_knob_unimodal_models_read_and_no_other() -> None:
    expected = {f"train.{name}" for name in TrainParams.model_fields if name not in (*FUSION_KNOBS, "arch")}
    expected |= {f"train.arch.{name}" for name in ArchParams.model_fields if name not in FUSION_ARCH_KNOBS}
    assert set(_stages()["train_unimodal"]["params"]) == expected


def test_fusion_stage_reads_all_train_params_and_the_unimodal_models() -> None:
    stages = _stages()
    assert stages["train_fusion"]["params"] == ["train"]
    assert set(stages["train_unimodal"]["outs"]) <= set(stages["train_fusion"]["deps"])


@pytest.mark.parametrize(
    "update",
    [
        {"fusion": "gated"},
        {"modality_dropout": 0.5},
        {"aux_weight": 0.0},
        {"pretrained_encoders": False},
        {"head_epochs": 3},
    ],
)
def test_fusion_knobs_do_not_reach_unimodal_models(update: dict) -> None:
    base = TrainParams()
    assert unimodal_params(base.model_copy(update=update)) == unimodal_params(base)
    arch = base.arch.model_copy(update={"fusion_hidden": 7, "lmf_rank": 2})
    assert unimodal_params(base.model_copy(update={"arch": arch})) == unimodal_params(base)


@pytest.mark.parametrize("update", [{"seed": 1}, {"lr": 0.01}, {"epochs": 3}])
def test_unimodal_knobs_do_reach_unimodal_models(update: dict) -> None:
    base = TrainParams()
    assert unimodal_params(base.model_copy(update=update)) != unimodal_params(base)
    arch = base.arch.model_copy(update={"embed_dim": 16})
    assert unimodal_params(base.model_copy(update={"arch": arch})) != unimodal_params(base)


def test_parts_split_the_seven_models() -> None:
    params = TrainParams(fusion="lmf")
    unimodal, fusion = training_jobs(params, "unimodal"), training_jobs(params, "fusion")
    assert [name for name, _, _ in unimodal] == ["image", "audio", "text"]
    assert [name for name, _, _ in fusion] == ["image+audio", "image+text", "audio+text", "candidate"]
    assert all(head is None for _, _, head in unimodal) and all(head == "lmf" for _, _, head in fusion)
    with pytest.raises(ConfigError, match="unknown training part 'pairs'"):
        training_jobs(params, "pairs")


def test_params_yaml_marks_exactly_the_fusion_only_knobs() -> None:
    """The `[fusion]` comments tell users which knobs rerun only train_fusion; they must match the code."""
    marked = {
        line.split(":")[0].strip() for line in (ROOT / "params.yaml").read_text().splitlines() if "# [fusion]" in line
    }
    assert marked == {*FUSION_KNOBS, *FUSION_ARCH_KNOBS}
