"""Entry file of the training deployment (`prefect deploy flows/training.py:training_flow`); the flow lives in mmfuse."""

from mmfuse.orchestration.training import training_flow

__all__ = ["training_flow"]

if __name__ == "__main__":
    training_flow()
