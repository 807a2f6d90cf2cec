"""Telling people: monitoring alerts and failed flow runs go to a Prefect notification block.

The block is named by `monitor.notify_block` ("<block type>/<name>": any Prefect
notification block, a custom webhook, Slack, Teams, e-mail). `mmfuse alerts-webhook URL`
saves a custom-webhook block under that name on the Prefect server. Without the block, or when
it cannot deliver, alerts stay in the reports and the flow logs it: monitoring never fails
because no one is listening.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from mmfuse.errors import ConfigError, MMFuseError
from mmfuse.params import load_params
from mmfuse.params.monitor import MonitorParams

logger = logging.getLogger(__name__)
WEBHOOK_TYPE = "custom-webhook"


def notify(block: str, subject: str, lines: list[str]) -> bool:
    """Send `lines` under `subject` through the notification block `block`; False when no such block
    exists or it could not deliver (a webhook that is down must not fail the check it reports on)."""
    try:
        target = Block.load(block)
    except ValueError:  # Prefect's answer for a block document that does not exist
        logger.warning("no notification block %r: alerts stay in the reports (`mmfuse alerts-webhook URL`)", block)
        return False
    try:
        target.notify("\n".join(lines), subject=subject)
    except Exception as exc:  # noqa: BLE001 - any block type's failure (a webhook down, Slack refusing)
        logger.error("notification block %r could not deliver %r (%s): it stays in the reports", block, subject, exc)
        return False
    return True


def save_webhook(url: str, block: str) -> None:
    """Save a custom-webhook notification block posting {"subject", "text"} as JSON to `url`."""
    kind, _, name = block.partition("/")
    if kind != WEBHOOK_TYPE or not name:
        raise ConfigError(f"monitor.notify_block {block!r}: a webhook block is named '{WEBHOOK_TYPE}/<name>'.")
    CustomWebhookNotificationBlock(
        name="mmfuse", url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    ).save(name, overwrite=True)


def _params(project: Any) -> MonitorParams:
    try:
        return load_params(Path(project or ".") / "params.yaml").monitor
    except MMFuseError:  # a run that failed on its params still gets its failure reported
        return MonitorParams()


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:  # noqa: ANN401 (Prefect's hook signature)
    """Prefect `on_failure` hook of the training and monitoring flows: a failed run alerts someone."""
    block = _params(flow_run.parameters.get("project")).notify_block
    notify(block, f"mmfuse: {flow.name} run {flow_run.name} failed", [state.message or "no message"])
