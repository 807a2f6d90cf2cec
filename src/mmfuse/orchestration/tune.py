"""`mmfuse tune`: a hyperparameter search as queued DVC experiments, then a seed spread.

Every run is a DVC experiment (`dvc exp run --queue`, run by `dvc queue start -j workers`),
so `dvc exp show` compares them and any one can be applied (`dvc exp apply NAME`) and
promoted by `dvc repro`; experiments never promote on their own. The search draws
`tune.budget` configurations from the grid `tune.space` (without replacement, seeded), then
reruns the `tune.top` best with other seeds (`train.seed` + 1, + 2, ...), because one run's
lead within seed noise (±0.55 points of fused accuracy over three seeds on `hard`) is not
a finding. The summary ranks configurations by their mean over seeds.
"""

from __future__ import annotations

import itertools
import random
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmfuse.errors import ConfigError
from mmfuse.io import write_json
from mmfuse.orchestration.dvc import experiments, queue_experiment, run_queue
from mmfuse.params import Params

METRICS_FILE = "metrics/evaluate.json"


def draw(space: dict[str, list[Any]], budget: int, seed: int) -> list[dict[str, Any]]:
    """`budget` distinct configurations of the grid (all of it when smaller), in a seeded order."""
    keys = sorted(space)
    grid = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    return random.Random(seed).sample(grid, min(budget, len(grid)))


def _score(runs: dict[str, dict[str, Any]], name: str, metric: str) -> float | None:
    value = runs.get(name, {}).get("metrics", {}).get(METRICS_FILE, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _run(project: Path, batch: dict[str, dict[str, Any]], workers: int, timeout_s: float) -> dict[str, Any]:
    for name, overrides in batch.items():
        queue_experiment(overrides, project, name)
    run_queue(project, list(batch), workers, timeout_s)
    return experiments(project)


def tune(project: Path, params: Params, run_id: str | None = None) -> dict[str, Any]:
    """Run the search and its seed spread; write and return the summary (tune.report, in the project)."""
    project = Path(project)
    settings = params.tune
    unknown = [key for key in settings.space if not key.startswith("train.")]
    if unknown:
        raise ConfigError(f"tune.space may only search train.* keys (the training stages' params); got {unknown}.")
    run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    timeout_s = settings.timeout_minutes * 60
    drawn = draw(settings.space, settings.budget, settings.sample_seed)
    configs = {f"tune-{run_id}-{i}": config for i, config in enumerate(drawn)}
    runs = _run(project, configs, settings.workers, timeout_s)
    scored = {name: _score(runs, name, settings.metric) for name in configs}
    ranked = sorted((n for n, s in scored.items() if s is not None), key=lambda n: scored[n], reverse=True)
    spread = {
        f"{name}-seed{k}": {**configs[name], "train.seed": params.train.seed + k}
        for name in ranked[: settings.top]
        for k in range(1, settings.seeds)
    }
    if spread:
        runs = _run(project, spread, settings.workers, timeout_s)
    summary = summarise(params, configs, spread, runs)
    write_json(project / settings.report, summary)
    return summary


def summarise(
    params: Params, configs: dict[str, dict[str, Any]], spread: dict[str, dict[str, Any]], runs: dict[str, Any]
) -> dict[str, Any]:
    """The search's summary: each drawn configuration (`configs`) with its runs, its own and its
    seed spread's (`spread`: NAME-seedK), their mean and spread of `tune.metric`, read from
    `runs` (`experiments`); the best first."""
    settings = params.tune
    results = []
    for name, overrides in configs.items():
        names = [name, *(n for n in spread if n.startswith(f"{name}-seed"))]
        values = [v for v in (_score(runs, n, settings.metric) for n in names) if v is not None]
        results.append(
            {
                "experiment": name,
                "params": overrides,
                "runs": {n: _score(runs, n, settings.metric) for n in names},
                "n": len(values),
                "mean": round(statistics.fmean(values), 4) if values else None,
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                "failed": [n for n in names if runs.get(n, {}).get("state") == "failed"],
            }
        )
    # the seed-spread configurations first (a mean over seeds beats one lucky run), then by mean
    results.sort(key=lambda r: (r["mean"] is None, -r["n"], -(r["mean"] or 0.0)))
    return {
        "metric": settings.metric,
        "space": settings.space,
        "budget": settings.budget,
        "seeds": settings.seeds,
        "baseline": {key: _current(params, key) for key in settings.space},
        "best": results[0] if results and results[0]["mean"] is not None else None,
        "results": results,
    }


def _current(params: Params, key: str) -> Any:
    """The value `key` ("train.arch.embed_dim") has in params.yaml today."""
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node
