"""DICOM gateway: SCP, spool, outbox, forwarder (issue: county gateway)."""

__all__: list[str] = []
