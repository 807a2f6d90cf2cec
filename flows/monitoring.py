"""Entry file of the monitoring deployment (`prefect deploy flows/monitoring.py:monitoring_flow`).

The flow itself lives in mmfuse.orchestration, so an installed package runs it too.
"""

from mmfuse.orchestration.monitoring import monitoring_flow

__all__ = ["monitoring_flow"]

if __name__ == "__main__":
    monitoring_flow()
