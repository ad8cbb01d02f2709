"""What a site's gateway needs to know about its site: ``GET /api/sites/me``.

The gateway accepts associations only from the modalities listed here (PS3.8 §9.3.4 calling AE
title check) and sends Storage Commitment replies to their addresses. A site created in
development mode accepts any calling AE title until its first modality is listed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from telerad.storage import Site
from telerad.viewer_api.deps import PrincipalDep, SessionDep
from telerad.viewer_api.problems import NotFound

router = APIRouter(tags=["sites"])


@router.get("/me")
def my_site(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """The caller's site with its modalities (404 for callers without a site, e.g. admin)."""
    site = session.get(Site, principal.site_id) if principal.site_id is not None else None
    if site is None:
        raise NotFound("the caller belongs to no site")
    modalities = [{"ae_title": m.ae_title, "host": m.host, "port": m.port} for m in site.modalities]
    return {
        "name": site.name,
        "issuer_of_patient_id": site.issuer_of_patient_id,
        "accept_any_ae": bool(site.accept_any_ae) and not modalities,
        "modalities": modalities,
    }
