"""Running commands in a test project with this virtualenv's tools on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmfuse.inference import registry


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def wipe_champions() -> None:
    """Empty the test model store's champion history (BENTOML_HOME is one per test process):
    a project's promote stage then starts from no champion, not from whatever fake an earlier
    test file in this process promoted."""
    shutil.rmtree(registry.store_root() / "models" / registry.MODEL_NAME, ignore_errors=True)
