"""The ``smtlock`` command: one subcommand per job; errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional

from . import __version__
from .errors import SMTLockError
from .postgres import mask_uri

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smtlock", description="Keep every Sumatra record when many jobs start at once.")
    parser.add_argument("--version", action="version", version=f"smtlock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    from . import stress
    stress.add_arguments(sub.add_parser("stress", help="launch N simultaneous jobs and count what survived",
                                        description=stress.__doc__.splitlines()[0]))
    from . import plugin
    for name, func, text in (("enable", plugin.enable, "protect every smt command of this project"),
                             ("disable", plugin.disable, "remove the protection of smt commands"),
                             ("status", plugin.status, "show what is protected in this project")):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("path", nargs="?", default=".", help="a path inside the project")
        command.set_defaults(handler=lambda args, func=func: print(func(args.path)))
    from . import doctor
    command = sub.add_parser("doctor", help="check (and --repair) a project damaged by concurrency",
                             description=doctor.__doc__.splitlines()[0])
    command.add_argument("--repair", action="store_true", help="fix what can be fixed (under the lock)")
    command.add_argument("--json", action="store_true", help="print the findings as JSON")
    command.add_argument("path", nargs="?", default=".", help="a path inside the project")
    command.set_defaults(handler=doctor.main)

    from . import postgres
    command = sub.add_parser("postgres", help="move this project's records to a PostgreSQL store",
                             description="Create the database if needed, copy and verify the records, "
                                         "switch the project to it; the old store is kept as it was.")
    command.add_argument("url", help="postgres://user:password@host:port/dbname")
    command.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    command.add_argument("--path", default=".", help="a path inside the project (default: here)")
    command.set_defaults(handler=lambda args: print("\n".join(
        postgres.move_project(args.path, args.url, dry_run=args.dry_run))))
    return parser


def _database_errors() -> type:
    try:
        from django.db import DatabaseError
    except ImportError:
        return OSError
    return DatabaseError


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SMTLockError as err:
        print(f"smtlock: error: {err}", file=sys.stderr)
        return 2
    except (OSError, _database_errors()) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"smtlock: error: {type(err).__name__}: {mask_uri(first)} (check that the project's .smt "
              "folder and its record store are readable and writable)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smtlock: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
