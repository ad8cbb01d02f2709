"""The site's modalities as the gateway knows them: which calling AE titles may send, and where
Storage Commitment replies reach them (from ``GET /api/sites/me``, its cached ``site.json``, or
the settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telerad.settings import ModalityAddress

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """The modalities allowed to send, and whether any AE title is accepted."""

    modalities: tuple[ModalityAddress, ...]
    accept_any: bool

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> SiteConfig:
        """From the centre's ``/api/sites/me`` answer (as cached in ``site.json``)."""
        modalities = tuple(ModalityAddress(**m) for m in data.get("modalities", []))
        return cls(modalities, bool(data.get("accept_any_ae")))

    @property
    def ae_titles(self) -> set[str]:
        """The allowed calling AE titles."""
        return {m.ae_title for m in self.modalities}

    def address_of(self, ae_title: str) -> Address | None:
        """Where a modality listens for Storage Commitment replies on a new association."""
        for modality in self.modalities:
            if modality.ae_title == ae_title and modality.host and modality.port:
                return modality.host, modality.port
        return None
