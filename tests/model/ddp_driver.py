"""Run under torchrun by tests/model/test_ddp.py: train the full model on the test's processed data.

    python -m torch.distributed.run ... ddp_driver.py PROCESSED ROOT PARAMS_JSON [KILL_RANK KILL_EPOCH]

With KILL_RANK and KILL_EPOCH that rank SIGKILLs itself right after that epoch (its checkpoint
is on disk by then), as a crashed machine would.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mmfuse.params.train import TrainParams
from mmfuse.training import distributed
from mmfuse.training.jobs import train_model


def main() -> None:
    processed, root, params = Path(sys.argv[1]), Path(sys.argv[2]), TrainParams.model_validate_json(sys.argv[3])
    kill_rank, kill_epoch = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (None, None)
    with distributed.process_group():
        hook = None
        if distributed.rank() == kill_rank:

            def hook(epoch: int) -> None:
                if epoch == kill_epoch:
                    os.kill(os.getpid(), signal.SIGKILL)

        train_model(
            processed,
            root / "model",
            params,
            ("image", "audio", "text"),
            "late",
            root / "ckpt",
            root / "curve.csv",
            epoch_hook=hook,
        )


if __name__ == "__main__":
    main()
