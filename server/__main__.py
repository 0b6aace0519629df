"""The ``voxserve`` command: ``serve`` runs the server; ``models list`` and ``models pull``
manage the weights in the model cache.

Conventions, as pip and most CLIs have them: ``voxserve`` alone (or ``voxserve
models`` alone) prints its help and exits 0; ``--version`` prints ``voxserve
<version>``. Output cut short by a closed pipe (``voxserve models list --json |
head``) ends quietly with status 141, what a shell reports for a tool killed by
SIGPIPE, so that ``set -o pipefail`` scripts see it as ``git log | head`` is seen.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from server.app import create_app
from server.connections import uvicorn_config
from server.logs import configure_logging
from server.model_commands import list_command, pull_command
from server.process import SHUTDOWN_GRACE_SECONDS, DrainingServer
from server.settings import Settings, SettingsError, load_settings

BROKEN_PIPE_STATUS = 141
"""128 + SIGPIPE: the status a shell gives a tool whose reader went away."""
DESCRIPTION = (
    "An OpenAI-compatible speech-to-text and text-to-speech server. 'serve' runs it; "
    "'models list' and 'models pull' manage the weights in the model cache. Settings "
    "come from a config file (--config or VOXSERVE_CONFIG) and VOXSERVE_* variables."
)
"""The help's description: plain text (the module docstring is reStructuredText)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxserve", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"voxserve {version('voxserve')}")
    parser.set_defaults(usage=parser.print_help)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", help="settings file, TOML or JSON")
    models = commands.add_parser("models", help="list or pull the catalogs' weights")
    models.set_defaults(usage=models.print_help)
    actions = models.add_subparsers(dest="action", title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="the catalogs and the library, and what is on disk")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    pulling = actions.add_parser(
        "pull",
        help="download and verify weights from the hub into the model cache",
        description="Honours HF_ENDPOINT (a mirror), HF_TOKEN and HF_HUB_OFFLINE=1 (verify "
        "the cache only); a cut download resumes.",
    )
    pulling.add_argument(
        "names",
        nargs="*",
        metavar="NAME|PRESET",
        help="catalog names, presets or hub ids; none: what the configured catalogs name",
    )
    for sub in (listing, pulling):
        sub.add_argument("--config", help="settings file, TOML or JSON")
        sub.add_argument("--cache-dir", help="model cache (default: model_cache_dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; output cut short by a closed pipe ends quietly (see above)."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, not at exit, where a broken pipe is reported
    except BrokenPipeError:
        # Python's recipe: what is still buffered would fail again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    return status


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None or (args.command == "models" and args.action is None):
        usage: Callable[[], None] = args.usage
        usage()  # a command group alone: its help, as pip and git do
        return 0
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "model_cache_dir": getattr(args, "cache_dir", None),
    }
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    if args.command == "models" and args.action == "list":
        return list_command(settings, as_json=args.json)
    if args.command == "models":
        return pull_command(args.names, settings)
    return serve(settings)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, drain, and return 0."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    config = uvicorn_config(
        app,
        settings,
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
