"""The ``webhook`` notification channel: a signed JSON POST to the site's URL.

Each request carries::

    Content-Type: application/json
    X-Telerad-Event: report-final
    X-Telerad-Delivery: <notification id>
    X-Telerad-Timestamp: <unix seconds>
    X-Telerad-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The receiver recomputes the HMAC over the timestamp, a dot and the raw body with the site's
secret, compares in constant time, and rejects stale timestamps (replay). Any 2xx answer means
delivered; anything else (3xx included: redirects are not followed), a timeout or a connection
error is retried by the sender with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from telerad.worklist import DeliveryFailed, OutgoingMessage

SIGNATURE_HEADER = "X-Telerad-Signature"
TIMESTAMP_HEADER = "X-Telerad-Timestamp"
EVENT_HEADER = "X-Telerad-Event"
DELIVERY_HEADER = "X-Telerad-Delivery"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """True if ``signature`` is :func:`sign`'s for these values (constant time)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannel:
    """Delivers notifications to site webhooks over HTTP(S)."""

    name = "webhook"

    def __init__(self, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def deliver(self, message: OutgoingMessage) -> None:
        """POST the signed message; :class:`DeliveryFailed` unless the answer is 2xx."""
        if not message.webhook_url or not message.webhook_secret:
            raise DeliveryFailed("the site has no webhook configured")
        body = message.body()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: message.event,
            DELIVERY_HEADER: str(message.notification_id),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(message.webhook_secret, timestamp, body),
        }
        try:
            response = self._client.post(message.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
