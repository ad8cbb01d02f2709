"""Reading tasks, routing, reports, and sites and readers as domain concepts.

Public API (other packages import only these names).
"""

from telerad.worklist.accounts import (
    AccountError,
    AccountExists,
    InvalidAccount,
    Principal,
    Role,
    UnknownSite,
    add_modality,
    authenticate_site_token,
    authenticate_user,
    create_site,
    create_site_token,
    create_user,
    hash_password,
    principal_for_user,
    revoke_site_tokens,
    site_by_name,
)

__all__ = [
    "AccountError",
    "AccountExists",
    "InvalidAccount",
    "Principal",
    "Role",
    "UnknownSite",
    "add_modality",
    "authenticate_site_token",
    "authenticate_user",
    "create_site",
    "create_site_token",
    "create_user",
    "hash_password",
    "principal_for_user",
    "revoke_site_tokens",
    "site_by_name",
]
