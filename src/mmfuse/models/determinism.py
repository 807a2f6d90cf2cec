"""Deterministic model computation: the same inputs give the same bytes, whatever the machine's core count.

Training, evaluation and promotion all run their model calls inside `deterministic`, so a
float sum is split across the same number of threads every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count (float sums depend on the split of work), restored after."""
    previous_threads, previous_mode = torch.get_num_threads(), torch.get_deterministic_debug_mode()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    # The same switch as `torch.use_deterministic_algorithms(True)` ("error" mode: a kernel
    # without a deterministic version raises), through its documented alternative:
    # `use_deterministic_algorithms` also imports torch._inductor to set a compiler flag, which
    # took 3.2 s of a 4.4 s promote stage here, in every process (nothing here is compiled).
    torch.set_deterministic_debug_mode("error")
    # NaN-filling every fresh buffer (a debugging aid of deterministic mode) costs ~15 % of a
    # step on CPU and changes no result: every kernel used here writes its whole output.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_deterministic_debug_mode(previous_mode)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill
