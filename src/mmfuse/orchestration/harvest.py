"""Harvest in a project: the window is written (mmfuse.monitoring.harvest), then versioned by DVC.

`dvc add` puts the window's files in the DVC cache and writes <window>.dvc; the .dvc file and
DVC's .gitignore are staged in git, so a following `dvc exp run` (which carries what git
tracks) and a commit both see the new data. The window then reaches training through
`data.extra` (`extra_with_harvests`): listed in params.yaml by the user, or set for one DVC
experiment by a drift-triggered training run.
"""

from __future__ import annotations

from pathlib import Path

from mmfuse.data.manifest import dataset_manifest
from mmfuse.inference.log import LogLocation, log_path
from mmfuse.monitoring.harvest import Harvest, harvest, windows
from mmfuse.orchestration.dvc import track
from mmfuse.params import Params


def harvest_project(project: Path, params: Params, log: LogLocation | None = None) -> Harvest:
    """Harvest the project's inference log (default: the service's) into monitor.harvest_dir and
    version what was kept with DVC."""
    project = Path(project).resolve()
    monitor = params.monitor
    result = harvest(
        log or log_path(project),
        project / monitor.harvest_dir,
        project / dataset_manifest(params.data, Path("data/raw")),
        holdout=monitor.harvest_holdout,
        validate=params.validate_,
        contract=params.preprocess,
        docs_dir=project / monitor.reports_dir / "harvest" / "data_docs",
    )
    if result.path is not None:
        track(result.path, project)
    return result


def extra_with_harvests(project: Path, params: Params) -> list[str]:
    """`data.extra` with every harvest window under monitor.harvest_dir added (project-relative paths, sorted)."""
    project = Path(project).resolve()
    found = {p.relative_to(project).as_posix() for p in windows(project / params.monitor.harvest_dir)}
    return sorted(set(params.data.extra) | found)
