"""``synap-bridge``: the command line. Exit status 78 (EX_CONFIG) for a bad configuration.

``--config PATH`` is accepted before or after the subcommand. Subcommands: ``serve``,
``check-config``, ``stats``, ``dead-letters {list,show,replay,purge}``, ``migrate`` (the last
three in :mod:`bridge.cli.ops`), ``events [show]`` (:mod:`bridge.cli.events`), ``try CODE``
(:mod:`bridge.cli.try_code`), ``synap sync`` (:mod:`bridge.cli.synap_sync`). Secrets are never
printed: ``check-config`` masks them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

import yaml

from bridge import __version__, logs, personal
from bridge import config as config_module
from bridge.cli import events as cli_events
from bridge.cli import ops as cli_ops
from bridge.cli import synap_sync as cli_synap
from bridge.cli import try_code as cli_try
from bridge.config import Config
from bridge.errors import ConfigError
from bridge.secretfiles import CREDENTIALS_DIRECTORY

EX_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="configuration file (default: $BRIDGE_CONFIG, else ./config.yaml)",
    )
    common.add_argument(
        "--credentials",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="read secrets as the service does: one file per setting in DIR (the unit's "
        "/etc/synap-bridge/credentials; same as CREDENTIALS_DIRECTORY=DIR)",
    )
    parser = argparse.ArgumentParser(
        prog="synap-bridge",
        description="Forward Synap webhooks to Segment without losing an acknowledged event.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", parents=[common], help="receive webhooks and deliver them")
    commands.add_parser(
        "check-config", parents=[common], help="print the effective configuration, secrets masked"
    )
    cli_ops.add_commands(commands, common)
    cli_events.add_commands(commands, common)
    cli_try.add_commands(commands, common)
    cli_synap.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command. A reader that goes away (``stats | head``) ends it quietly: what it
    wanted was printed, so a traceback would only be noise."""
    try:
        return _main(argv, out or sys.stdout)
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None, out: TextIO) -> int:
    args = build_parser().parse_args(argv)
    path = getattr(args, "config", None)
    if getattr(args, "credentials", None):  # in the process's environment: reloads read it too
        os.environ[CREDENTIALS_DIRECTORY] = args.credentials
    try:
        config = config_module.load(path, os.environ)
    except ConfigError as exc:
        return _config_errors(exc, path)
    if args.command == "check-config":
        return check_config(config, out, path)
    if args.command == "serve":
        logs.configure(config.logging.level, config.logging.format)
        personal.configure(full=config.logging.dry_run_full)
        from bridge.serve import serve  # imported here: the operator commands need no server

        try:
            return run_event_loop(serve(config, path))
        except ConfigError as exc:
            return _config_errors(exc, path)
    logs.configure(config.logging.level, config.logging.format, stream=sys.stderr)
    if args.command == "events":
        return cli_events.run(args, config, out)
    if args.command == "try":
        return cli_try.run(args, config, out)
    if args.command == "synap":
        return cli_synap.run(args, config, out)
    return cli_ops.run(args, config, out)


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``serve`` on uvloop, asyncio's event loop rewritten on libuv.

    The intake is CPU-bound on the event loop's thread, and part of that is the loop's own
    work (socket reads and writes, scheduling callbacks); uvloop does that work in C
    (docs/benchmarks.md has the before and after). It is a drop-in loop: signals,
    ``call_soon_threadsafe`` from the writer and upload threads, and ``run_in_executor`` behave
    the same. Where it is not installed (Windows has no build), the standard loop runs.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency wherever it builds
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _config_errors(exc: ConfigError, path: str | None) -> int:
    where: object = config_module.config_path(path, os.environ)
    if all(problem.startswith(config_module.ENV_PREFIX) for problem in exc.problems):
        where = "environment"  # every problem names its variable; the file is not at fault
    print(f"synap-bridge: invalid configuration ({where}):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EX_CONFIG


def check_config(config: Config, out: TextIO, path: str | None = None) -> int:
    """Print the effective configuration, or refuse it: a listen problem, a template
    placeholder left in a secret, a webhook password too short to guard anything."""
    problems = [config.listen_problem()] if config.listen_problem() else []
    problems += config_module.weak_secrets(config)
    if problems:
        return _config_errors(ConfigError([p for p in problems if p]), path)
    from bridge.mapping.routing import describe_routing

    yaml.safe_dump(config_module.masked(config), out, sort_keys=False, allow_unicode=True)
    out.write("\n# routing\n")
    for line in describe_routing(config):
        out.write(f"#   {line}\n")
    if config.dry_run:
        out.write(
            "# dry-run: segment.write_key is not set; messages are logged and kept queued, "
            "not sent\n"
        )
    return 0
