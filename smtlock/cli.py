"""The ``smtlock`` command: one subcommand per job; errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Type

from . import __version__
from ._lock.backends import LEASE_VARIABLE
from ._lock.filesystem import FILESYSTEM_VARIABLE
from ._lock.lock import TIMEOUT_VARIABLE
from ._postgres.client import mask_uri
from .errors import SMTLockError

__all__ = ["main", "build_parser"]

ENVIRONMENT = f"""environment:
  {TIMEOUT_VARIABLE}     seconds to wait for the project's lock, or for a PostgreSQL server
                      that is down (a number; -1 waits forever). Unset: the lock waits as
                      long as it takes, a job waits 300 s for the server (holding no lock,
                      its simulation not started), a finished run as long as it takes,
                      and commands that only read (smt list) 5 s
  {FILESYSTEM_VARIABLE}  local or shared: overrides what the mount table says of .smt's
                      filesystem (an unknown type counts as shared)
  {LEASE_VARIABLE}       seconds a lease across hosts lasts unless renewed, on a shared
                      filesystem (default 30): a dead host blocks the others that long"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, exit 2, with a suggestion for a typo."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{_suggestion(self, message)} "
                     f"(see `{self.prog} --help`)\n")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """"; did you mean X?" for an unknown subcommand, choice or option close to a known one."""
    if "invalid choice: '" in message:
        wrong = message.split("invalid choice: '", 1)[1].split("'", 1)[0]
        known = [c for action in parser._actions for c in (action.choices or [])]
    elif "unrecognized arguments: " in message:
        wrong = message.split("unrecognized arguments: ", 1)[1].split()[0]
        known = [o for action in parser._actions for o in action.option_strings]
    else:
        return ""
    close = difflib.get_close_matches(wrong, [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``smtlock help CMD`` and ``smtlock CMD --help`` print the same text."""
    parser = _Parser(prog="smtlock", description="Keep every Sumatra record when many jobs start at once.",
                     epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"smtlock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    commands: Dict[str, argparse.ArgumentParser] = {}

    def add(name: str, text: str, description: str = "") -> argparse.ArgumentParser:
        commands[name] = sub.add_parser(name, help=text, description=textwrap.fill(description or text, 79),
                                        epilog=ENVIRONMENT,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        return commands[name]

    def path_argument(command: argparse.ArgumentParser) -> None:
        command.add_argument("path", nargs="?", default=".", help="a path inside the project (default: here)")

    from ._tracking import plugin
    for name, func, text in (("enable", plugin.enable, "protect every smt command of this project"),
                             ("disable", plugin.disable, "remove the protection of smt commands"),
                             ("status", plugin.status, "show what is protected in this project")):
        command = add(name, text)
        path_argument(command)
        command.set_defaults(handler=lambda args, func=func: print(func(args.path)))

    from ._ops import doctor
    command = add("doctor", "check (and --repair) a project damaged by concurrency",
                  "Check a Sumatra project that concurrent jobs may have damaged, one line per check; "
                  "--repair fixes what can be fixed, under the project's lock. Exit 0: healthy; 1: problems "
                  "left; 2: bad usage.")
    command.add_argument("--repair", action="store_true", help="fix what can be fixed (under the lock)")
    command.add_argument("--json", action="store_true", help="print the findings (or the error) as JSON")
    path_argument(command)
    command.set_defaults(handler=doctor.main)

    command = add("postgres", "move this project's records to a PostgreSQL store",
                  "Create the database if needed, copy and verify the records, switch the project to it; "
                  "the old store is kept as it was.")
    command.add_argument("url", nargs="?", help="postgres://user:password@host:port/dbname")
    path_argument(command)
    command.add_argument("--server", nargs="?", const="", metavar="FOLDER",
                         help="use the server `smtlock server` made (in FOLDER, default its own) instead of a URL")
    command.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    command.add_argument("--path", dest="old_path", help=argparse.SUPPRESS)  # the old spelling, still accepted
    command.set_defaults(handler=_postgres)

    from ._postgres import server
    command = add("server", "a PostgreSQL server of your own, no root needed",
                  "A PostgreSQL server owned by you, for projects whose jobs run on many hosts: "
                  "init makes it (generated passwords, kept readable by you only; projects connect as a "
                  "role that is no superuser, its password in libpq's ~/.pgpass), start and stop run "
                  "it, status and url show it. Binaries: pip install 'smtlock[server]', or the system's.")
    command.add_argument("action", choices=["init", "start", "stop", "status", "url"])
    command.add_argument("--folder", type=Path, help=f"where it lives (default {server.default_folder()})")
    command.add_argument("--port", type=int, default=5433, help="init: the port it listens on (default 5433)")
    command.add_argument("--listen", default="127.0.0.1",
                         help="init: the address it listens on (default 127.0.0.1; an address of this host, "
                              "or '*', lets jobs on other hosts reach it)")
    command.add_argument("--host", help="init: the name or address other hosts reach this one by, for the URL "
                                        "(default: the --listen address, or this host's name for '*')")
    command.add_argument("--show-password", action="store_true", help="url: print the password too")
    command.set_defaults(handler=_server)

    from ._harness import stress
    stress.add_arguments(add("stress", "launch N simultaneous jobs and count what survived",
                             "Launch N jobs at once against a new demo project, first as plain Sumatra, "
                             "then with smtlock, and count what each kept."))

    command = add("help", "show the help of a command")
    command.add_argument("topic", nargs="?", choices=sorted(commands), metavar="COMMAND",
                         help="the command to explain")
    command.set_defaults(handler=lambda args: print(
        (commands[args.topic] if args.topic else parser).format_help().rstrip()))
    parser.set_defaults(commands=commands)
    return parser


def _postgres(args: argparse.Namespace) -> None:
    from ._ops import migrate
    from ._postgres import server
    if (args.url is None) == (args.server is None):
        raise SMTLockError("give the store's URL or --server (the server `smtlock server` made), one of them")
    uri = args.url if args.server is None else server.url(Path(args.server) if args.server else None)
    print("\n".join(migrate.move_project(args.old_path or args.path, uri, dry_run=args.dry_run)))


def _server(args: argparse.Namespace) -> None:
    from ._postgres import server
    if args.action == "init":
        lines = server.init(args.folder, port=args.port, listen=args.listen, host=args.host)
    elif args.action == "url":
        lines = [server.url(args.folder, show_password=args.show_password)]
    else:
        lines = getattr(server, args.action)(args.folder)
    print("\n".join(lines))


def _database_errors() -> Type[Exception]:
    try:
        from django.db import DatabaseError
    except ImportError:
        return OSError
    return DatabaseError


def _parse(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse; an unknown option is reported by its subcommand (``doctor --repiar``), with a suggestion."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = args.commands.get(getattr(args, "command", None), parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parse(build_parser(), argv)
    try:
        return int(args.handler(args) or 0)
    except SMTLockError as err:
        return _fail(args, str(err))
    except (OSError, _database_errors()) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return _fail(args, f"{type(err).__name__}: {mask_uri(first)} (check that the project's .smt folder "
                           "and its record store are readable and writable)")
    except KeyboardInterrupt:
        print("smtlock: interrupted", file=sys.stderr)
        return 130


def _fail(args: argparse.Namespace, message: str) -> int:
    """One line on stderr, exit 2; with ``--json``, the same as JSON on stdout too."""
    if getattr(args, "json", None) is True:
        print(json.dumps({"error": message, "exit": 2}))
    print(f"smtlock: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
