"""Run by ``smtlock.pth`` when Python starts: the ``import numpy`` and ``import scipy.stats`` of
Sumatra's dependency ``parameters`` made lazy.

Why: ``parameters.random`` imports NumPy and ``scipy.stats`` whenever they are installed, for the draws
of its distributions (``GammaDist.next``...). Every ``smt`` command imports it, and they are most of
what ``smt run`` costs a job before the job starts (1-2 CPU s of ~2.5). Here, while
``parameters.random`` runs, its imports of ``numpy``, ``numpy.random``, ``scipy`` and ``scipy.stats``
bind stand-ins. When it is done, the stand-ins are out of ``sys.modules`` (any other import gets the
real module), and at its first use each imports the real one and puts it in ``parameters.random``'s
name: from then on the module holds what upstream's holds. ``have_numpy`` and ``have_scipy`` are what
they were (whether the module can be found), and a distribution draws what it drew.

It is a module of its own, outside the package: importing ``smtlock`` imports Sumatra and Django, which
no Python process should pay at start. It imports nothing Python has not loaded when it starts (no
``typing``, no ``importlib.abc``: 30 ms), so it costs a process a fraction of a millisecond, and a
string comparison per import. ``SMTLOCK_LAZY_IMPORTS=0`` turns it off.
"""

import os
import sys
from _thread import _local

try:  # what importlib.machinery names, as CPython has them loaded when it starts (importlib itself is not)
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import PathFinder
except ImportError:  # pragma: no cover - another Python
    from importlib.machinery import ModuleSpec, PathFinder

__all__ = ["install", "LazyImports", "DEFERRED"]

TYPE_CHECKING = False  # typing's own costs a process 5 ms at start; type checkers take this name as True
if TYPE_CHECKING:
    from importlib.abc import Loader
    from types import ModuleType
    from typing import Any, List, Optional, Sequence
else:
    Loader = object  # a loader needs no base class

#: what ``parameters.random`` imports at its top, each for a few methods (the draws of a distribution)
DEFERRED = ("numpy", "numpy.random", "scipy", "scipy.stats")
#: the module whose imports are deferred
MODULE = "parameters.random"

_running = _local()  # .module: this thread is running parameters.random


class _Running(Loader):
    """``parameters.random``'s own loader, run with stand-ins in place, then without them."""

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
    """What ``import numpy``, ``import scipy.stats``... get inside ``parameters.random``: a module that,
    at its first use, imports the real one, puts it in ``parameters.random``'s name for it, and answers
    from it."""

    def __init__(self, locations: "Optional[List[str]]") -> None:
        self.locations = locations

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: "ModuleType") -> None:
        name = module.__name__

        def __getattr__(attr: str) -> "Any":
            running, _running.module = getattr(_running, "module", False), False  # real imports now
            try:
                _forget()
                real = import_module(name)
                user = sys.modules.get(MODULE)
                top = name.partition(".")[0]
                if user is not None and getattr(vars(user).get(top), "_smtlock_stand_in", False):
                    vars(user)[top] = import_module(top)  # from now on, exactly what upstream had
                if f"{name}.{attr}" in DEFERRED:
                    import_module(f"{name}.{attr}")
                return getattr(real, attr)
            finally:
                _running.module = running

        vars(module).update(__getattr__=__getattr__, _smtlock_stand_in=True)


def import_module(name: str) -> "ModuleType":
    """``importlib.import_module``, without importing importlib at start."""
    __import__(name)
    return sys.modules[name]


def _forget() -> None:
    """Take the stand-ins out of ``sys.modules`` and out of their parents (``numpy.random`` out of the
    stand-in ``numpy``), so that any later import, or attribute, is the real module."""
    stand_ins = {name: sys.modules[name] for name in DEFERRED
                 if getattr(sys.modules.get(name), "_smtlock_stand_in", False)}
    for name, stand_in in stand_ins.items():
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        holder = stand_ins.get(parent) or sys.modules.get(parent)
        if holder is not None and vars(holder).get(child) is stand_in:
            del vars(holder)[child]


class LazyImports:
    """The finder: it answers for ``parameters.random``, and for ``numpy``, ``scipy`` and their
    submodules above only while ``parameters.random`` runs in this thread (each only if Python's own
    finders find it: ``have_numpy`` and ``have_scipy`` are what they were); every other import goes on
    to Python's own finders."""

    def find_spec(self, fullname: str, path: "Optional[Sequence[str]]" = None,
                  target: "Optional[ModuleType]" = None) -> "Optional[ModuleSpec]":
        if fullname == MODULE:
            spec = PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _Running(spec.loader)
            return spec
        if fullname in DEFERRED and getattr(_running, "module", False):
            parent, _, _ = fullname.rpartition(".")
            if parent:  # below a stand-in (whose __path__ is empty): where the real parent lives
                above = sys.modules[parent].__spec__
                path = getattr(above and above.loader, "locations", path)
            spec = PathFinder.find_spec(fullname, path)
            if spec is not None:  # a package's stand-in has an empty __path__: we find its children
                return ModuleSpec(fullname, _StandIn(spec.submodule_search_locations),
                                  is_package=spec.submodule_search_locations is not None)
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), unless ``SMTLOCK_LAZY_IMPORTS=0``."""
    if os.environ.get("SMTLOCK_LAZY_IMPORTS", "1") == "0":
        return
    if not any(isinstance(finder, LazyImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, LazyImports())
