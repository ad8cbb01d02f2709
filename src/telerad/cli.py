"""The ``telerad`` command: start processes and administer an installation.

``telerad serve`` runs the central service with embedded defaults (SQLite and filesystem
objects under ``./telerad-data``); ``telerad site …`` and ``telerad user …`` administer
accounts; ``telerad demo`` writes a synthetic CT study.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from telerad.settings import Settings

logger = logging.getLogger("telerad")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment/TOML, with command-line options on top."""
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        os.environ["TELERAD_CONFIG"] = str(args.config)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    settings = Settings(**overrides)
    http = settings.http.model_copy(
        update={k: v for k, v in (("port", getattr(args, "http_port", None)),
                                  ("host", getattr(args, "host", None))) if v is not None}
    )  # fmt: skip
    dicom_port = getattr(args, "dicom_port", None)
    dicom = settings.dicom.model_copy(update={"port": dicom_port} if dicom_port else {})
    return settings.model_copy(update={"http": http, "dicom": dicom})


def _open_session(settings: Settings) -> Any:
    from telerad.storage import create_catalog_engine, migrate, session_factory

    engine = create_catalog_engine(settings.database_url)
    migrate(engine)
    return session_factory(engine)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the central API (uvicorn) with the settings' database and object store."""
    import uvicorn

    from telerad.bootstrap import bootstrap
    from telerad.viewer_api import build_services, create_app

    settings = _settings(args)
    services = build_services(settings)
    with services.sessions.begin() as session:
        result = bootstrap(session, settings)
    _announce(settings, result)
    app = create_app(settings, services)
    try:
        uvicorn.run(
            app, host=settings.http.host, port=settings.http.port, log_level="info",
            access_log=False,
        )  # fmt: skip
    finally:
        services.close()
    return 0


def _announce(settings: Settings, result: Any) -> None:
    url = f"http://{settings.http.host}:{settings.http.port}"
    catalog = settings.database_url.split(":")[0]
    print(f"telerad serving {url}  (data in {settings.data_dir}, catalog {catalog})")
    if result.created_local_site:
        print(
            "development mode: site 'local' accepts any calling AE title "
            "until an admin lists its modalities"
        )
    if result.created_admin and result.admin_password:
        print(f"created user 'admin' with password {result.admin_password} (shown only once)")
        login = f"username=admin&password={result.admin_password}"
        print(f"log in: curl -d '{login}' {url}/api/auth/token")
    elif result.created_admin:
        print("created user 'admin' with the password in TELERAD_ADMIN_PASSWORD")
    sys.stdout.flush()


def cmd_site_add(args: argparse.Namespace) -> int:
    """Add a site (a county hospital) with its modalities' AE titles."""
    from telerad.worklist import create_site

    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        site = create_site(session, args.name, issuer=args.issuer, ae_titles=tuple(args.ae or ()))
        print(f"site {site.name} (issuer {site.issuer_of_patient_id}) added")
    return 0


def cmd_site_token(args: argparse.Namespace) -> int:
    """Issue an API token for a site's gateway (printed once)."""
    from telerad.worklist import create_site_token

    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        print(create_site_token(session, args.name, args.label))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    """Add a user; the password comes from --password-stdin or an interactive prompt."""
    from telerad.worklist import create_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        create_user(
            session, args.username, password, args.role, site=args.site,
            reads_for=tuple(args.reads_for or ()), full_name=args.full_name,
        )  # fmt: skip
    print(f"user {args.username} ({args.role}) added")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic CT study as Part-10 files."""
    from telerad.demo import write_ct_study

    paths = write_ct_study(args.out, slices=args.slices)
    print(f"wrote {len(paths)} CT slices to {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telerad", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (or TELERAD_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="data directory (TELERAD_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the central service with embedded defaults")
    serve.add_argument("--host", help="listen address (TELERAD_HTTP__HOST)")
    serve.add_argument("--http-port", type=int, help="HTTP port (TELERAD_HTTP__PORT)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (TELERAD_DICOM__PORT)")
    serve.add_argument("--data-dir", type=Path, help="data directory (TELERAD_DATA_DIR)")
    serve.set_defaults(func=cmd_serve)

    site = commands.add_parser("site", help="manage sites").add_subparsers(
        dest="action", required=True
    )
    site_add = site.add_parser("add", help="add a site")
    site_add.add_argument("name")
    site_add.add_argument("--issuer", help="Issuer of Patient ID (default: the site name)")
    site_add.add_argument("--ae", action="append", help="a modality AE title (repeatable)")
    site_add.set_defaults(func=cmd_site_add)
    site_token = site.add_parser("token", help="issue a gateway API token for a site")
    site_token.add_argument("name")
    site_token.add_argument("--label", default="gateway")
    site_token.set_defaults(func=cmd_site_token)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    user_add = user.add_parser("add", help="add a user")
    user_add.add_argument("username")
    user_add.add_argument(
        "--role", required=True, choices=["admin", "radiographer", "radiologist", "referrer"]
    )
    user_add.add_argument("--site", help="the user's site (radiographer, referrer)")
    user_add.add_argument("--reads-for", action="append", help="a site a radiologist reads for")
    user_add.add_argument("--full-name", default="")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    user_add.set_defaults(func=cmd_user_add)

    demo = commands.add_parser("demo", help="write a synthetic CT study")
    demo.add_argument("--out", type=Path, default=Path("demo-ct"))
    demo.add_argument("--slices", type=int, default=100)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``telerad`` command."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from telerad.worklist import AccountError

        if isinstance(exc, AccountError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
