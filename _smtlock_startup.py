"""Run by ``smtlock.pth`` when Python starts: makes the ``import scipy.stats`` of Sumatra's dependency
``parameters`` lazy.

Why: ``parameters.random`` imports ``scipy.stats`` whenever SciPy is installed, for one method
(``GammaDist.next``). Every ``smt`` command imports it, and it is most of what ``smt run`` costs a job
before the job starts (1-2 CPU s of ~2.5). Here, while ``parameters.random`` runs, its ``import
scipy.stats`` binds a stand-in; when it is done, the stand-in is gone, and ``scipy.stats`` is imported on
first use through SciPy's own lazy submodules (``scipy.__getattr__``). ``have_scipy`` is what it was
(whether ``scipy.stats`` can be found), and ``GammaDist.next`` draws what it drew.

It is a module of its own, outside the package: importing ``smtlock`` imports Sumatra and Django, which
no Python process should pay at start. It imports nothing Python has not loaded when it starts (no
``typing``, no ``importlib.abc``: 30 ms), so it costs a process a fraction of a millisecond, and a
string comparison per import. ``SMTLOCK_LAZY_SCIPY=0`` turns it off.
"""

import os
import sys
from _thread import _local

try:  # what importlib.machinery names, as CPython has them loaded when it starts (importlib itself is not)
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import PathFinder
except ImportError:  # pragma: no cover - another Python
    from importlib.machinery import ModuleSpec, PathFinder

__all__ = ["install", "LazyScipyStats"]

TYPE_CHECKING = False  # typing's own costs a process 5 ms at start; type checkers take this name as True
if TYPE_CHECKING:
    from importlib.abc import Loader
    from types import ModuleType
    from typing import Any, Optional, Sequence
else:
    Loader = object  # a loader needs no base class

_running = _local()  # .module: this thread is running parameters.random


class _Running(Loader):
    """``parameters.random``'s own loader, run with the stand-in in place, then without it."""

    def __init__(self, loader: "Loader") -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> "Optional[ModuleType]":
        return self.loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        module.__loader__ = self.loader  # what it would be without us (reload, inspect)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        _running.module = True
        try:
            self.loader.exec_module(module)
        finally:
            _running.module = False
            _forget()


class _StandIn(Loader):
    """What ``import scipy.stats`` gets inside ``parameters.random``: a module that imports the real one
    if used (only another thread could reach it, in the moment before it is gone)."""

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: "ModuleType") -> None:
        def __getattr__(name: str) -> "Any":
            _forget()
            import scipy.stats
            return getattr(scipy.stats, name)

        vars(module).update(__getattr__=__getattr__, _smtlock_stand_in=True)


def _forget() -> None:
    """Take the stand-in out of ``sys.modules`` and out of the ``scipy`` package."""
    stand_in = sys.modules.get("scipy.stats")
    if getattr(stand_in, "_smtlock_stand_in", False):
        del sys.modules["scipy.stats"]
        scipy = sys.modules.get("scipy")
        if scipy is not None and vars(scipy).get("stats") is stand_in:
            del vars(scipy)["stats"]


class LazyScipyStats:
    """The finder: it answers for ``parameters.random``, and for ``scipy.stats`` only while
    ``parameters.random`` runs in this thread; every other import goes on to Python's own finders."""

    def find_spec(self, fullname: str, path: "Optional[Sequence[str]]" = None,
                  target: "Optional[ModuleType]" = None) -> "Optional[ModuleSpec]":
        if fullname == "parameters.random":
            spec = PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _Running(spec.loader)
            return spec
        if fullname == "scipy.stats" and getattr(_running, "module", False):
            scipy = sys.modules.get("scipy")
            lazy = scipy is not None and "__getattr__" in vars(scipy) and "stats" in vars(scipy).get(
                "submodules", ())
            if lazy and PathFinder.find_spec(fullname, path) is not None:
                return ModuleSpec(fullname, _StandIn())
        return None  # not ours, or a SciPy without lazy submodules: imported as always


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), unless ``SMTLOCK_LAZY_SCIPY=0``."""
    if os.environ.get("SMTLOCK_LAZY_SCIPY", "1") == "0":
        return
    if not any(isinstance(finder, LazyScipyStats) for finder in sys.meta_path):
        sys.meta_path.insert(0, LazyScipyStats())
