"""The county gateway: DICOM SCP, durable spool and outbox, forwarding to the centre with
STOW-RS, edge completeness manifests, Storage Commitment, and Query/Retrieve answered from the
centre.

Public API (other packages and the CLI import only these names).
"""

from telerad.dicom_gateway.centre import CentreClient, ManifestAnswer, StowOutcome
from telerad.dicom_gateway.commitment import CommitmentResult, Committer
from telerad.dicom_gateway.errors import (
    CentreError,
    CentreRefused,
    CentreUnavailable,
    GatewayError,
    InvalidIdentifier,
    QueryRejected,
    RequestMismatch,
    SpoolFull,
    SpoolUnavailable,
)
from telerad.dicom_gateway.outbox import Outbox, StudyProgress
from telerad.dicom_gateway.qr import QR_STATUS, QueryRetrieve
from telerad.dicom_gateway.receiver import Receiver, StoreRequest
from telerad.dicom_gateway.runner import Gateway, wire_mode
from telerad.dicom_gateway.scp import STORE_STATUS, CallingAePolicy
from telerad.dicom_gateway.spool import Spool
from telerad.dicom_gateway.status import StatusServer, create_status_app, study_json

__all__ = [
    "QR_STATUS",
    "STORE_STATUS",
    "CallingAePolicy",
    "CentreClient",
    "CentreError",
    "CentreRefused",
    "CentreUnavailable",
    "CommitmentResult",
    "Committer",
    "Gateway",
    "GatewayError",
    "InvalidIdentifier",
    "ManifestAnswer",
    "Outbox",
    "QueryRejected",
    "QueryRetrieve",
    "Receiver",
    "RequestMismatch",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "StatusServer",
    "StoreRequest",
    "StowOutcome",
    "StudyProgress",
    "create_status_app",
    "study_json",
    "wire_mode",
]
