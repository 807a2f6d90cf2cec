"""Entry file of the monitoring deployment (`prefect deploy flows/monitoring.py:monitoring_flow`); the flow lives in mmfuse."""

from mmfuse.orchestration.monitoring import monitoring_flow

__all__ = ["monitoring_flow"]

if __name__ == "__main__":
    monitoring_flow()
