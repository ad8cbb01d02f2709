"""The ``telerad`` command: start processes and administer an installation.

``telerad serve`` runs the central service and a gateway for site ``local`` with embedded
defaults (SQLite and filesystem objects under ``./telerad-data``, DICOM on 11112, forwarding over
loopback); ``telerad gateway`` runs a county gateway alone; ``telerad site …`` and
``telerad user …`` administer accounts; ``telerad demo`` writes (or ``--send``s) a synthetic CT
study.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import subprocess
import sys
import threading
import time
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
    return session_factory(engine, writer=True)  # the server may be writing: queue, not fail


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the central API (uvicorn) with the settings' database and object store.

    With ``http.workers`` other than 1 (default: one per core) uvicorn runs that many worker
    processes on the port, each building its own services (connection pool, render cache,
    batched audit writer, background loops, which share the database safely); one process is
    one GIL, so this is what lets rendering use every core.
    """
    from telerad.bootstrap import bootstrap
    from telerad.viewer_api import build_services, create_app
    from telerad.viewer_api.serving import run_http, run_http_workers

    settings = _settings(args)
    services = build_services(settings)
    with services.writer.begin() as session:
        result = bootstrap(session, settings)
        token = None if args.no_gateway else _loopback_token(session)
    _announce(settings, result)
    workers = settings.http.worker_count()
    print(f"HTTP worker processes: {workers}", flush=True)
    child = None if token is None else _spawn_gateway(args, settings, token)
    try:
        if workers == 1:
            run_http(create_app(settings, services), settings)
        else:
            services.close()  # each worker builds its own
            run_http_workers(settings, workers)
    finally:
        if child is not None:
            _stop_child(child)
        services.close()
    return 0


def _loopback_token(session: Any) -> str:
    """A fresh token for the in-tree gateway of site ``local``; the previous one is revoked."""
    from telerad.worklist import create_site_token, revoke_site_tokens

    revoke_site_tokens(session, "local", name="loopback-gateway")
    return create_site_token(session, "local", "loopback-gateway")


def _spawn_gateway(
    args: argparse.Namespace, settings: Settings, token: str
) -> subprocess.Popen[bytes]:
    """Run ``telerad gateway`` as a child process forwarding to this centre over loopback and
    answering query/retrieve look-ups from this centre's database (``gateway.local_catalog``).

    The token travels in the child's environment, never on its command line."""
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::", "") else settings.http.host  # noqa: S104
    env = dict(os.environ)
    env["TELERAD_DATA_DIR"] = str(settings.data_dir)
    env["TELERAD_GATEWAY__CENTRE_URL"] = f"http://{host}:{settings.http.port}"
    env["TELERAD_GATEWAY__SITE_TOKEN"] = token
    env["TELERAD_GATEWAY__LOCAL_CATALOG"] = "true"  # same machine, same database
    env["TELERAD_DICOM__PORT"] = str(settings.dicom.port)
    command = [sys.executable, "-m", "telerad.cli"]
    if getattr(args, "config", None):
        command += ["--config", str(args.config)]
    return subprocess.Popen([*command, "gateway"], env=env, preexec_fn=_stop_with_parent)


def _stop_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM it when ``serve`` dies, however it dies —
    uvicorn re-raises the signal it caught, so ``serve``'s own clean-up may never run."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run a county gateway: DICOM SCP, spool, forwarder, manifests, status page."""
    from telerad.dicom_gateway import Gateway, StatusServer, create_status_app
    from telerad.dicom_gateway.scp import quiet_pynetdicom
    from telerad.viewer_api.services import quiet_patient_data_loggers

    quiet_patient_data_loggers()
    quiet_pynetdicom()
    settings = _settings(args)
    config = settings.gateway
    if not config.centre_url or config.site_token is None:
        print(
            "telerad gateway needs TELERAD_GATEWAY__CENTRE_URL and TELERAD_GATEWAY__SITE_TOKEN",
            file=sys.stderr,
        )
        return 2
    gateway = Gateway(
        settings, centre_url=config.centre_url, site_token=config.site_token.get_secret_value()
    )
    gateway.start()
    status = None
    if config.status_port:
        info = {"ae_title": settings.dicom.ae_title, "centre": config.centre_url}
        status = StatusServer(
            create_status_app(gateway.outbox, info), config.status_host, config.status_port
        )
        status.start()
    print(
        f"telerad gateway {settings.dicom.ae_title} on DICOM port {gateway.dicom_port}, "
        f"forwarding to {config.centre_url} (wire: {gateway.wire})"
        + (f", status http://{config.status_host}:{status.port}/" if status else ""),
        flush=True,
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    if status:
        status.stop()
    gateway.stop()
    return 0


def cmd_gateway_status(args: argparse.Namespace) -> int:
    """Print per-study progress from the gateway's outbox (``--watch`` refreshes)."""
    from telerad.dicom_gateway import Outbox

    settings = _settings(args)
    path = settings.gateway_path / "outbox.db"
    if not path.exists():
        print(f"no gateway outbox at {path}", file=sys.stderr)
        return 1
    outbox = Outbox(path)
    try:
        while True:
            text = _progress_text(outbox)
            if args.watch:
                print("\x1b[2J\x1b[H" + text, flush=True)
                time.sleep(args.interval)
                continue
            print(text)
            return 0
    except KeyboardInterrupt:
        return 0
    finally:
        outbox.close()


def _progress_text(outbox: Any) -> str:
    lines = [f"instances: {outbox.counts()}"]
    for p in outbox.progress(limit=20):
        width = 30
        filled = int(width * p.confirmed / max(p.received, 1))
        bar = "#" * filled + "." * (width - filled)
        state = "complete" if p.complete else (f"{p.dead} dead" if p.dead else p.state)
        lines.append(
            f"{p.study_uid[-24:]:>24} [{bar}] {p.confirmed}/{p.received} confirmed, "
            f"{p.bytes_sent / 1e6:.1f} MB sent, {p.retries} retries, {state}"
            + (f" - {p.last_error}" if p.last_error and not p.complete else "")
        )
    return "\n".join(lines)


def cmd_gateway_retry(args: argparse.Namespace) -> int:
    """Put dead-lettered instances (of one study, or all) back in the queue."""
    from telerad.dicom_gateway import Outbox

    outbox = Outbox(_settings(args).gateway_path / "outbox.db")
    try:
        print(f"{outbox.retry(args.study)} instances queued again")
    finally:
        outbox.close()
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


def cmd_user_list(args: argparse.Namespace) -> int:
    """Print the users, one per line."""
    from telerad.worklist import list_users

    sessions = _open_session(_settings(args))
    with sessions() as session:
        views = list_users(session)
    print(f"{'username':<24} {'role':<13} {'site':<16} {'reads for':<24} active")
    for view in views:
        reads_for = ",".join(view.reads_for) or "-"
        active = "yes" if view.active else "NO"
        site = view.site or "-"
        print(f"{view.username:<24} {view.role:<13} {site:<16} {reads_for:<24} {active}")
    return 0


def cmd_user_change(args: argparse.Namespace) -> int:
    """disable, enable, password, reads-for: one change to a user (as the web API's PATCH
    ``/api/users/{username}`` does, work handed back included)."""
    from telerad.worklist import Actor, UserChanges, update_user

    if args.action == "password":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"new password for {args.username}: ")
        changes = UserChanges(password=password)
    elif args.action == "reads-for":
        changes = UserChanges(reads_for=tuple(args.sites))
    else:
        changes = UserChanges(active=args.action == "enable")
    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        _view, returned = update_user(session, args.username, changes, Actor(None, "cli", "admin"))
    handed = f"; tasks handed back: {', '.join(map(str, returned))}" if returned else ""
    print(f"user {args.username}: {changes.describe()}{handed}")
    return 0


def cmd_site_modality(args: argparse.Namespace) -> int:
    """List a modality with a site: the gateway then accepts only listed AE titles."""
    from telerad.worklist import add_modality, site_by_name

    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        site = site_by_name(session, args.name)
        add_modality(session, site, args.ae_title, args.host, args.port)
    print(f"modality {args.ae_title} listed for site {args.name}")
    return 0


def cmd_site_webhook(args: argparse.Namespace) -> int:
    """Set (or with --remove, remove) the site's notification webhook; prints the HMAC key."""
    from telerad.worklist import DeliveryError, remove_site_webhook, set_site_webhook

    sessions = _open_session(_settings(args))
    with sessions.begin() as session:
        if args.remove:
            removed = remove_site_webhook(session, args.name)
            print(f"webhook of site {args.name} {'removed' if removed else 'was not set'}")
            return 0
        if not args.url:
            print("error: a URL is needed (or --remove)", file=sys.stderr)
            return 2
        try:
            hook, secret = set_site_webhook(session, args.name, args.url, args.secret)
        except DeliveryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"webhook of site {args.name}: {hook.url}")
        print(f"HMAC-SHA256 secret (X-Telerad-Signature): {secret}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic CT study as Part-10 files, or send it to a gateway over DICOM."""
    from telerad.demo import ct_study_bytes, write_ct_study

    if not args.send:
        paths = write_ct_study(args.out, slices=args.slices, seed=args.seed)
        print(f"wrote {len(paths)} CT slices to {args.out}")
        return 0
    from telerad.dicom_gateway.scu import send_instances

    settings = _settings(args)
    instances = ct_study_bytes(slices=args.slices, seed=args.seed)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        bar = "#" * (30 * done // total)
        print(f"\rsending [{bar:<30}] {done}/{total}", end="", flush=True)

    try:
        result = send_instances(
            instances, args.host, args.port or settings.dicom.port,
            called_ae=args.called_ae or settings.dicom.ae_title, calling_ae=args.calling_ae,
            progress=progress,
        )  # fmt: skip
    except ConnectionError as exc:  # refused association, nobody listening, link cut
        print(f"\ntelerad demo: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.monotonic() - started
    codes = ", ".join(f"{code:#06x}: {n}" for code, n in sorted(result.statuses.items()))
    print(f"\nsent {result.sent} CT slices in {seconds:.1f} s ({codes})")
    return 0 if result.ok else 1


DATA_DIR_HELP = "data directory (TELERAD_DATA_DIR)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telerad", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (or TELERAD_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="data directory (TELERAD_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the central service with embedded defaults")
    serve.add_argument("--host", help="listen address (TELERAD_HTTP__HOST)")
    serve.add_argument("--http-port", type=int, help="HTTP port (TELERAD_HTTP__PORT)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (TELERAD_DICOM__PORT)")
    # SUPPRESS: without the option here, `telerad --data-dir X serve` keeps X (a sub-parser's
    # default None would overwrite it, and a gateway would open another site's spool)
    serve.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    serve.add_argument("--no-gateway", action="store_true", help="central service only")
    serve.set_defaults(func=cmd_serve)

    gateway = commands.add_parser("gateway", help="run a county gateway (DICOM in, STOW-RS out)")
    gateway.add_argument("--dicom-port", type=int, help="DICOM port (TELERAD_DICOM__PORT)")
    gateway.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    gateway.set_defaults(func=cmd_gateway)
    gateway_actions = gateway.add_subparsers(dest="action")
    gw_status = gateway_actions.add_parser("status", help="per-study progress of this gateway")
    gw_status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    gw_status.add_argument("--interval", type=float, default=2.0)
    gw_status.set_defaults(func=cmd_gateway_status)
    gw_retry = gateway_actions.add_parser("retry", help="re-queue dead-lettered instances")
    gw_retry.add_argument("study", nargs="?", help="only this Study Instance UID")
    gw_retry.set_defaults(func=cmd_gateway_retry)

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
    site_modality = site.add_parser("modality", help="list a modality (AE title) with a site")
    site_modality.add_argument("name")
    site_modality.add_argument("ae_title")
    site_modality.add_argument("--host", help="where it accepts Storage Commitment replies")
    site_modality.add_argument("--port", type=int)
    site_modality.set_defaults(func=cmd_site_modality)
    site_webhook = site.add_parser("webhook", help="set the site's notification webhook")
    site_webhook.add_argument("name")
    site_webhook.add_argument("url", nargs="?", help="https://… receiving signed JSON POSTs")
    site_webhook.add_argument("--secret", help="HMAC key (16+ characters; default: generated)")
    site_webhook.add_argument("--remove", action="store_true", help="remove the webhook")
    site_webhook.set_defaults(func=cmd_site_webhook)

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
    user.add_parser("list", help="list the users").set_defaults(func=cmd_user_list)
    for action, helptext in (
        ("disable", "deactivate a user at once (his tasks go back to the pool)"),
        ("enable", "reactivate a user"),
    ):
        toggle = user.add_parser(action, help=helptext)
        toggle.add_argument("username")
        toggle.set_defaults(func=cmd_user_change)
    user_password = user.add_parser("password", help="set a user's password")
    user_password.add_argument("username")
    user_password.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    user_password.set_defaults(func=cmd_user_change)
    user_reads = user.add_parser(
        "reads-for", help="set the sites a radiologist reads for (none: no site)"
    )
    user_reads.add_argument("username")
    user_reads.add_argument("sites", nargs="*")
    user_reads.set_defaults(func=cmd_user_change)

    demo = commands.add_parser("demo", help="write a synthetic CT study")
    demo.add_argument("--out", type=Path, default=Path("demo-ct"))
    demo.add_argument("--slices", type=int, default=100)
    demo.add_argument("--send", action="store_true", help="C-STORE it to a gateway instead")
    demo.add_argument("--host", default="127.0.0.1", help="gateway host (with --send)")
    demo.add_argument("--port", type=int, help="gateway DICOM port (default TELERAD_DICOM__PORT)")
    demo.add_argument("--called-ae", help="gateway AE title (default TELERAD_DICOM__AE_TITLE)")
    demo.add_argument("--calling-ae", default="TELERAD-DEMO", help="our AE title")
    demo.add_argument(
        "--seed", type=int, default=0, help="another seed makes another patient and study UIDs"
    )
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
