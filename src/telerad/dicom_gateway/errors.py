"""Exceptions raised by :mod:`telerad.dicom_gateway`.

The tree::

    GatewayError
    ├── SpoolFull            free space below the watermark, or the disk filled while writing
    ├── SpoolUnavailable     the spool or the outbox cannot be written
    ├── RequestMismatch      the data set contradicts its C-STORE request (class or instance UID)
    ├── InvalidIdentifier    a C-FIND/C-MOVE/C-GET identifier that cannot be acted on
    └── CentreError          the centre refused or could not be reached
        ├── CentreUnavailable    connection failure, timeout, 5xx, 429: try again later
        └── CentreRefused        4xx other than 408/429: retrying the same request cannot help
            └── QueryRejected    a QIDO-RS search refused as malformed (400)

Ingest refusals (:class:`telerad.storage.InvalidInstance`) pass through unchanged. The SCP maps
each class to a DIMSE status in one table (:data:`telerad.dicom_gateway.scp.STORE_STATUS`,
and :data:`telerad.dicom_gateway.qr.QR_STATUS` for query/retrieve).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of the gateway's errors."""


class SpoolFull(GatewayError):
    """The spool's disk is (nearly) full."""


class SpoolUnavailable(GatewayError):
    """The spool or outbox cannot be written."""


class RequestMismatch(GatewayError):
    """The data set's SOP Class or Instance UID differs from the C-STORE request's."""


class CentreError(GatewayError):
    """The centre did not accept a request."""


class CentreUnavailable(CentreError):
    """Transient: the centre cannot be reached or is overloaded."""


class CentreRefused(CentreError):
    """Permanent for this request (bad token, bad request)."""


class InvalidIdentifier(GatewayError):
    """A C-FIND, C-MOVE or C-GET identifier the gateway cannot act on (PS3.4 C.4: 0xA900)."""


class QueryRejected(CentreRefused):
    """The centre refused a QIDO-RS search as malformed (HTTP 400)."""
