"""Delivery's background work in the API process: the notification sender loop.

Started from the app's lifespan. Several API processes may run it at once against one
database: the sender leases rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite), so each notification is delivered by one of them.
"""

from __future__ import annotations

from collections.abc import Callable

from telerad.settings import DeliverySettings
from telerad.viewer_api.services import Services
from telerad.viewer_api.webhooks import WebhookChannel
from telerad.worklist import (
    Channel,
    InboxChannel,
    NotificationSender,
    RetryPolicy,
    SenderLoop,
    install_delivery_hooks,
)


def retry_policy(settings: DeliverySettings) -> RetryPolicy:
    """The sender's timing from the ``delivery`` settings."""
    return RetryPolicy(
        base_seconds=settings.retry_base_seconds,
        max_seconds=settings.retry_max_seconds,
        max_attempts=settings.max_attempts,
        renotify_seconds=settings.critical_renotify_minutes * 60,
        max_escalations=settings.critical_max_escalations,
    )


def notification_sender(services: Services) -> tuple[NotificationSender, WebhookChannel]:
    """A sender over the inbox and webhook channels (the caller closes the webhook channel)."""
    settings = services.settings.delivery
    webhook = WebhookChannel(timeout=settings.webhook_timeout_seconds)
    channels: dict[str, Channel] = {"inbox": InboxChannel(), "webhook": webhook}
    return NotificationSender(services.writer, channels, retry_policy(settings)), webhook


def start_delivery(services: Services) -> Callable[[], None]:
    """Install the report hooks (referrer visibility, report notifications) and start the
    sender loop (unless ``delivery.background`` is off); returns its stop."""
    install_delivery_hooks()
    settings = services.settings.delivery
    if not settings.background:
        return lambda: None
    sender, webhook = notification_sender(services)
    loop = SenderLoop(sender, settings.sender_interval_seconds)
    loop.start()

    def stop() -> None:
        loop.stop()
        webhook.close()

    return stop
