"""params.yaml: the shipped file loads, and bad files fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmfuse.errors import ConfigError
from mmfuse.params import Params, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_params_load_and_match_the_defaults_where_documented() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params) and params.train.fusion == "late" and params.data.preset == "hard"


def test_omegaconf_missing_marker_is_refused_naming_the_key(tmp_path: Path) -> None:
    """`dvc exp run -S` parses params.yaml with OmegaConf, where "???" means a missing value."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["text_noise"]["uninformative"] = ["", "???"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data\.text_noise\.uninformative\[1\] is '\?\?\?'.*dvc exp run -S"):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "mapping of sections"),
        ("train:\n  epochs: 0\n", "train.epochs"),
    ],
)
def test_bad_params_files_fail_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_dvc_rewrites_params_yaml_without_changing_a_line(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml through ruamel; block-style lists keep that rewrite
    to the one line it changes, so an experiment's diff shows only what the experiment set."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(path) as data:
        data["train"]["seed"] = 7
    original, rewritten = (ROOT / "params.yaml").read_text().splitlines(), path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, rewritten) if a != b]
    assert len(original) == len(rewritten) and len(changed) == 1 and "seed: 7" in changed[0][1]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda raw: raw.__setitem__("preproces", raw.pop("preprocess")),
            r"unknown section 'preproces'; known: data, validate, train, preprocess",
        ),
        (
            lambda raw: raw["train"]["arch"].__setitem__("embed_dimm", 8),
            r"unknown key 'train\.arch\.embed_dimm'; known: embed_dim, token_dim",
        ),
        (lambda raw: raw["serve"].__setitem__("worker", 2), r"unknown key 'serve\.worker'; known: workers, threads"),
    ],
)
def test_an_unknown_section_or_key_fails_naming_it_and_the_known_ones(tmp_path: Path, edit, message: str) -> None:
    """A misspelt section used to be ignored silently (the pipeline ran on the defaults)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(path)
