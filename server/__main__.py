"""The ``voxserve`` command: ``serve`` runs the server, ``models`` prints the catalogs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import msgspec
import uvicorn

from server.app import create_app
from server.logs import configure_logging
from server.process import SHUTDOWN_GRACE_SECONDS, DrainingServer
from server.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", help="settings file, TOML or JSON")
    models = commands.add_parser("models", help="print the model and voice catalogs as JSON")
    models.add_argument("--config", help="settings file, TOML or JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    if args.command == "models":
        catalogs = {"models": settings.models, "speech_models": settings.speech_models}
        print(msgspec.json.format(msgspec.json.encode(catalogs)).decode())
        return 0
    return serve(settings)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, drain, and return 0."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # server.logs has configured logging
        log_level=settings.log_level,
        access_log=False,  # RequestContext writes the access lines
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    DrainingServer(config, app.state.runtime).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
