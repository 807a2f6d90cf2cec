"""`bentoml build` packs the service, its static page, params.yaml and the champion, offline; the
image it describes serves on the port and as the user that deploy/kubernetes expects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml
from test_service_support import promoted_champion

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_with_the_champion(tmp_path: Path) -> None:
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

    # The image `bentoml containerize` would build (no container runtime here: its Dockerfile).
    dockerfile = tmp_path / "Dockerfile"
    bentoml.container.get_containerfile(tag, output_path=str(dockerfile))
    text = dockerfile.read_text()
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert f"EXPOSE {container['ports'][0]['containerPort']}" in text
    assert re.search(rf"^ARG BENTO_USER_UID={pod['securityContext']['runAsUser']}$", text, re.M), text[:2000]
