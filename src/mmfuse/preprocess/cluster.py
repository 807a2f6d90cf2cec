"""Where the preprocess stage's per-record work runs: on Dask distributed.

- By default, a `LocalCluster` of `preprocess.workers` processes with one thread each, on
  127.0.0.1 without dashboards, started and stopped with the stage (about 1 s here).
  Featurising one record is single-threaded numpy and torch work, so processes, not
  threads, are what scale it.
- With $MMFUSE_DASK_ADDRESS (`tcp://scheduler:8786`), an existing cluster: its workers need
  mmfuse installed and the raw media at the same paths (a shared filesystem). The address
  stays out of params.yaml on purpose: where the work runs changes no output byte, so it
  must change no DVC hash either.

Outputs do not depend on either choice: records go out in fixed chunks and come back into
place by chunk index, and the global statistics are computed afterwards in float64, in
record order (`mmfuse.preprocess.build`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from mmfuse.errors import MMFuseError

DASK_ENV = "MMFUSE_DASK_ADDRESS"
_CONNECT_TIMEOUT_S = 10
_WORKER_ENV = "distributed.nanny.pre-spawn-environ"


class ClusterError(MMFuseError):
    """The Dask scheduler named by $MMFUSE_DASK_ADDRESS cannot be reached."""


@contextmanager
def dask_client(workers: int) -> Iterator[Client]:
    """A client of $MMFUSE_DASK_ADDRESS's cluster, else of a local cluster of `workers` processes."""
    address = os.environ.get(DASK_ENV, "").strip()
    if address:
        try:
            client = Client(address, timeout=_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"{DASK_ENV}={address}: no Dask scheduler answers ({exc}); start one, or unset {DASK_ENV} "
                "to run on a local cluster."
            ) from None
        with client:
            yield client
        return
    # Dask's workers get MALLOC_TRIM_THRESHOLD_=65536 (against fragmentation in long-lived
    # workers); here it made featurising 1.5x slower (2.0 s vs 1.36 s per 1,000 avdigits
    # records on one worker, the difference spent returning memory to the kernel and mapping
    # it again), so this short-lived cluster keeps glibc's default. The thread limits stay.
    environ = {k: v for k, v in dask.config.get(_WORKER_ENV).items() if k != "MALLOC_TRIM_THRESHOLD_"}
    with (
        dask.config.set({_WORKER_ENV: environ}),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server (health, metrics) on a free port, never a fixed 8787
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
