"""Entry file of the training deployment (`prefect deploy flows/training.py:training_flow`).

The flow itself lives in mmfuse.orchestration, so an installed package runs it too.
"""

from mmfuse.orchestration.training import training_flow

__all__ = ["training_flow"]

if __name__ == "__main__":
    training_flow()
