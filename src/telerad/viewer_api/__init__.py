"""The central HTTP API: DICOMweb, worklist, reports, administration, web pages.

Public API (other packages import only these names).
"""

from telerad.viewer_api.app import create_app
from telerad.viewer_api.services import Services, build_services

__all__ = ["Services", "build_services", "create_app"]
