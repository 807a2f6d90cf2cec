"""`bentoml build` packs the service, its static page, params.yaml and the champion, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_service_support import promoted_champion

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_with_the_champion():
    champion = promoted_champion()
    home = Path(os.environ["BENTOML_HOME"])
    assert ROOT not in home.parents, "the model store must stay outside the build context"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "mmfuse.serving.service:MMFuse"
    assert [m["tag"] for m in info["services"][0]["models"]] == [champion]
    for path in (
        "src/mmfuse/serving/service.py",
        "src/mmfuse/serving/static/demo.html",
        "src/mmfuse/preprocess/sample.py",
        "params.yaml",
    ):
        assert (bento / "src" / path).exists(), path
    assert not list((bento / "src").glob("data/**/*")) and not (bento / "src" / ".venv").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    locked = (ROOT / "requirements-serve.lock").read_text()
    pins_and_hashes = re.compile(r"^[\w.-]+==\S+|sha256:[0-9a-f]{64}", re.M)
    assert set(pins_and_hashes.findall(locked)) == set(pins_and_hashes.findall(requirements))
    assert "torch==2.13.0+cpu" in requirements
