"""Run by ``smtlock.pth`` when Python starts: the ``import numpy`` and ``import scipy.stats`` of
Sumatra's dependency ``parameters`` made lazy.

Why: ``parameters.random`` imports NumPy and ``scipy.stats`` whenever they are installed, for the draws
of its distributions (``GammaDist.next``...). Every ``smt`` command imports it, and they are most of
what ``smt run`` costs a job before the job starts (1-2 CPU s of ~2.5). Here, while
``parameters.random`` runs, its ``import numpy``, ``import numpy.random``, ``import scipy`` and
``import scipy.stats`` bind stand-ins, if NumPy (SciPy) is not imported yet and can be found: so
``have_numpy`` and ``have_scipy`` are what they were. At its first use a stand-in imports the real
package with those submodules, puts it in ``parameters.random``'s name (from then on the module holds
what upstream's holds) and answers from it. The stand-ins are never in ``sys.modules``: no other
module, and no other thread, sees them. ``builtins.__import__`` answers for ``parameters.random``
only while it runs (a function defined there keeps Python's own builtins).

It is a module of its own, outside the package: importing ``smtlock`` imports Sumatra and Django, which
no Python process should pay at start. It imports nothing Python has not loaded when it starts (no
``typing``, no ``importlib.abc``: 30 ms), so it costs a process a fraction of a millisecond, and a
string comparison per import. ``SMTLOCK_LAZY_IMPORTS=0`` turns it off.

In an ``smt`` command (``sys.argv[0]`` is ``smt``) it also imports ``sumatra.cli`` with Python's cyclic
garbage collector paused, then freezes what that import made (``gc.freeze``: kept for the process's
life, it is never walked again) and lets the collector go on: while Sumatra, Django and GitPython were
imported, it walked the growing heap ~150 times (about 50 ms of an ``smt run`` job's 0.35 CPU s).
The job's script runs in a process of its own, untouched.
"""

import builtins
import os
import sys
from _thread import _local

try:  # what importlib.machinery names, as CPython has them loaded when it starts (importlib itself is not)
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import PathFinder
except ImportError:  # pragma: no cover - another Python
    from importlib.machinery import ModuleSpec, PathFinder

__all__ = ["install", "LazyImports", "DEFERRED", "COMMAND_LINE"]

TYPE_CHECKING = False  # typing's own costs a process 5 ms at start; type checkers take this name as True
if TYPE_CHECKING:
    from importlib.abc import Loader
    from types import ModuleType
    from typing import Any, Mapping, Optional, Sequence
else:
    Loader = object  # a loader needs no base class

#: the module whose imports are deferred
MODULE = "parameters.random"
#: what it imports at its top, by package, each for a few methods (the draws of a distribution)
DEFERRED = {"numpy": ("numpy.random",), "scipy": ("scipy.stats",)}
#: the module whose import starts Sumatra's command line; in ``smt`` itself, imported uncollected
COMMAND_LINE = "sumatra.cli"

_running = _local()  # .stand_ins, .globals: this thread's run of parameters.random (else None)
_before = [builtins.__import__]  # the __import__ that was in place when parameters.random began


class _Around(Loader):
    """A module's own loader, run inside :meth:`around`; the module keeps that loader as its own (what
    it would be without us: reload, inspect)."""

    def __init__(self, loader: "Loader") -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> "Optional[ModuleType]":
        return self.loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.around(module)

    def around(self, module: "ModuleType") -> None:
        self.loader.exec_module(module)


class _Running(_Around):
    """``parameters.random``'s own loader, run with :func:`_import` as ``__import__``."""

    def around(self, module: "ModuleType") -> None:
        _before[0] = builtins.__import__
        _running.stand_ins, _running.globals = {}, vars(module)
        builtins.__import__ = _import
        try:
            self.loader.exec_module(module)
        finally:
            if builtins.__import__ is _import:
                builtins.__import__ = _before[0]
            _running.stand_ins = _running.globals = None


class _Uncollected(_Around):
    """``sumatra.cli``'s own loader in an ``smt`` process: it runs with the cyclic collector paused (if
    it was on), and what it made is frozen before the collector goes on."""

    def around(self, module: "ModuleType") -> None:
        import gc
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.loader.exec_module(module)
        finally:
            if collecting:
                gc.freeze()
                gc.enable()


def _import(name: str, globals: "Optional[Mapping[str, object]]" = None,
            locals: "Optional[Mapping[str, object]]" = None, fromlist: "Optional[Sequence[str]]" = (),
            level: int = 0) -> "ModuleType":
    """``__import__`` while ``parameters.random`` runs: its plain ``import numpy[.random]`` and ``import
    scipy[.stats]`` get a stand-in; every other import, and every other thread's, is Python's own."""
    stand_ins = getattr(_running, "stand_ins", None)
    top = name.partition(".")[0]
    if stand_ins is None or globals is not _running.globals or level or fromlist or top not in DEFERRED \
            or (name != top and name not in DEFERRED[top]) or top in sys.modules:
        return _before[0](name, globals, locals, fromlist, level)
    if top not in stand_ins:
        if not _found(top):  # not on sys.path as files: imported now, as always (or not found, as always)
            return _before[0](name, globals, locals, fromlist, level)
        stand_ins[top] = _stand_in(top)
    return stand_ins[top]


def _found(top: str) -> bool:
    """Whether ``top`` and the submodules deferred with it are where Python's path finder finds them."""
    spec = PathFinder.find_spec(top)
    return spec is not None and spec.submodule_search_locations is not None and all(
        PathFinder.find_spec(sub, spec.submodule_search_locations) is not None for sub in DEFERRED[top])


def _stand_in(top: str) -> "ModuleType":
    """A module named ``top`` that imports the real one (and the submodules deferred with it) at its
    first use, and gives it ``parameters.random``'s name for it."""
    stand_in = type(sys)(top)

    def __getattr__(attr: str) -> "Any":
        __import__(top)
        for sub in DEFERRED[top]:
            __import__(sub)
        real = sys.modules[top]
        user = sys.modules.get(MODULE)
        if user is not None and vars(user).get(top) is stand_in:
            vars(user)[top] = real  # from now on, exactly what upstream's module holds
        return getattr(real, attr)

    vars(stand_in).update(__getattr__=__getattr__, _smtlock_stand_in=True)
    return stand_in


class LazyImports:
    """The finder: it answers for ``parameters.random`` (its own spec, run by :class:`_Running`) and, in
    ``smt``, for ``sumatra.cli`` (:class:`_Uncollected`); every other import goes on to Python's own."""

    def find_spec(self, fullname: str, path: "Optional[Sequence[str]]" = None,
                  target: "Optional[ModuleType]" = None) -> "Optional[ModuleSpec]":
        wrap: "type[_Around]"
        if fullname == MODULE:
            wrap = _Running
        elif fullname == COMMAND_LINE and os.path.basename(sys.argv[0] if sys.argv else "") in ("smt", "smt.exe"):
            wrap = _Uncollected
        else:
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = wrap(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), unless ``SMTLOCK_LAZY_IMPORTS=0``."""
    if os.environ.get("SMTLOCK_LAZY_IMPORTS", "1") == "0":
        return
    if not any(isinstance(finder, LazyImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, LazyImports())
