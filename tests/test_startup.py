"""What every Python process of an environment with smtlock gets at start (``smtlock.pth``, which runs
``_smtlock_startup``): Sumatra's dependency ``parameters`` no longer imports NumPy and ``scipy.stats``
when ``smt`` starts, and a parameter file's distributions draw what they drew. The hook is whatever this
environment installed (editable in the main session, a wheel in the field and lowest sessions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _smtlock_startup

#: what an `smt` command imports first, then a parameter file with a distribution, as Sumatra reads it
SMT = r'''
import json, sys
import sumatra.commands
from sumatra.parameters import build_parameters
random = sys.modules["parameters.random"]
seen = {"hook": [type(f).__name__ for f in sys.meta_path].count("LazyImports"),
        "at_start": sorted({"numpy", "numpy.random", "scipy", "scipy.stats"} & set(sys.modules)),
        "have": [random.have_numpy, random.have_scipy]}
parameters = build_parameters(sys.argv[1])
seen["pretty"] = parameters.pretty()
import numpy
numpy.random.seed(7)
seen["draws"] = [float(x) for d in ("rate", "noise", "offset") for x in parameters[d].next(3)]
fitted = random.NormalDist()
fitted.from_stats([1.0, 2.0, 4.0])  # numpy.mean and numpy.std
seen["fitted"] = fitted.params
import scipy.stats
seen["norm"] = float(scipy.stats.norm.cdf(0.5))
seen["at_end"] = [random.numpy is numpy, random.scipy is sys.modules["scipy"],
                  scipy.stats is sys.modules["scipy.stats"], type(sys.modules["scipy.stats"]).__name__,
                  type(random.numpy.random).__name__]
print(json.dumps(seen))
'''


def _smt(tmp_path: Path, **env: str) -> dict:
    params = tmp_path / "sweep.param"
    params.write_text('{"rate": GammaDist(mean=2.0, std=0.5), "noise": NormalDist(mean=0.0, std=1.0), '
                      '"offset": UniformDist(min=-1.0, max=1.0), "n": 3}\n')
    done = subprocess.run([sys.executable, "-c", SMT, str(params)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_smt_starts_without_numpy_and_scipy_and_distributions_draw_what_they_drew(tmp_path: Path) -> None:
    lazy = _smt(tmp_path)
    assert lazy["hook"] == 1, "smtlock.pth is not installed in this environment (pip install -e . adds it)"
    assert lazy["at_start"] == [] and lazy["have"] == [True, True]
    assert lazy["at_end"] == [True, True, True, "module", "module"]  # the real ones, from the first draw
    eager = _smt(tmp_path, SMTLOCK_LAZY_IMPORTS="0")  # plain Python: parameters imports them at once
    assert eager["hook"] == 0 and eager["at_start"] == ["numpy", "numpy.random", "scipy", "scipy.stats"]
    same = ("have", "pretty", "draws", "fitted", "norm", "at_end")
    assert {k: lazy[k] for k in same} == {k: eager[k] for k in same}


def test_the_hook_imports_nothing_a_starting_python_has_not_imported_already() -> None:
    """It runs in every process of the environment (pip, a notebook kernel, each job): it must cost
    nothing there. ``-S`` and ``import site``: what a start loads, without the ``.pth`` files of
    site-packages."""
    code = ("import site, sys; before = set(sys.modules); import _smtlock_startup; _smtlock_startup.install(); "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(_smtlock_startup.__file__).parent)})
    assert json.loads(done.stdout.replace("'", '"')) == ["_smtlock_startup"]


#: parameters.random run with a tracer that notes, at each of its lines, any stand-in in sys.modules
WATCHED = r'''
import json, sys
seen = []
def tracer(frame, event, arg):
    if frame.f_globals.get("__name__") != "parameters.random":
        return None
    if event == "line":
        seen.extend(name for name, module in list(sys.modules.items())
                    if getattr(module, "_smtlock_stand_in", False))
    return tracer
sys.settrace(tracer)
import parameters
sys.settrace(None)
random = sys.modules["parameters.random"]
print(json.dumps([sorted(set(seen)), getattr(random.numpy, "_smtlock_stand_in", False)]))
'''


def test_no_other_module_or_thread_ever_sees_a_stand_in(tmp_path: Path) -> None:
    """While parameters.random runs, another thread may import NumPy or SciPy (a dask worker's
    threads, a notebook): sys.modules holds only real modules at every line it runs, and the stand-in
    is its own name for NumPy alone."""
    done = subprocess.run([sys.executable, "-c", WATCHED], cwd=tmp_path, capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == [[], True]


def test_scipy_imported_before_is_used_as_upstream_uses_it(tmp_path: Path) -> None:
    """A script that imported SciPy (not scipy.stats) before Sumatra: parameters.random imports
    scipy.stats as upstream does, also from a SciPy without lazy submodules (before 1.9)."""
    code = ("import sys, json, scipy\n"
            "vars(scipy).pop('__getattr__', None)  # as SciPy before 1.9: no lazy submodules\n"
            "import sumatra.commands, numpy\n"
            "numpy.random.seed(1)\n"
            "print(json.dumps([float(x) for x in sys.modules['parameters.random'].GammaDist(mean=2.0, std=0.5)"
            ".next(2)]))\n")
    lazy, eager = (subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                  env={**os.environ, **env}) for env in ({}, {"SMTLOCK_LAZY_IMPORTS": "0"}))
    assert lazy.returncode == 0, lazy.stderr[-2000:]
    assert json.loads(lazy.stdout) == json.loads(eager.stdout)


def test_a_package_of_ones_own_named_parameters_imports_as_always(tmp_path: Path) -> None:
    """The hook answers for any module named parameters.random: one that imports other NumPy
    submodules and uses NumPy as it is imported works as without it."""
    package = tmp_path / "mine" / "parameters"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "random.py").write_text("import numpy\nimport numpy.linalg\nimport scipy\n"
                                       "NORM = float(numpy.linalg.norm([3.0, 4.0]))\nPI = numpy.pi\n")
    code = "import parameters.random as r; print(r.NORM, r.PI, r.numpy.__name__, type(r.scipy).__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "mine")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["5.0", "3.141592653589793", "numpy", "module"]


#: a process that imports ``sumatra.cli`` as the ``smt`` script does, named ``argv[1]``; ``argv[2]`` "off":
#: the collector turned off before
COMMAND_LINE = r'''
import gc, json, sys
sys.argv[0] = sys.argv[1]
if sys.argv[2] == "off":
    gc.disable()
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
frozen = gc.get_freeze_count()
import sumatra.cli
print(json.dumps({"collections": len(collections) > 0, "frozen": gc.get_freeze_count() > frozen,
                  "collecting": gc.isenabled()}))
'''


def test_smt_imports_its_command_line_uncollected_then_collects_as_before(tmp_path: Path) -> None:
    """In ``smt`` the collector walked the growing heap ~150 times while Sumatra, Django and GitPython
    were imported (about 50 ms of a job's 0.35 CPU s): now none, what the import made is frozen, and
    the collector is on after it. Any other process, one that turned the collector off, and
    ``SMTLOCK_LAZY_IMPORTS=0`` are left as they were."""
    def start(name: str, collector: str = "on", **env: str) -> dict:
        done = subprocess.run([sys.executable, "-c", COMMAND_LINE, name, collector], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)
    assert start("/opt/env/bin/smt") == {"collections": False, "frozen": True, "collecting": True}
    assert start("/opt/env/bin/python") == {"collections": True, "frozen": False, "collecting": True}
    assert start("/opt/env/bin/smt", "off") == {"collections": False, "frozen": False, "collecting": False}
    assert start("/opt/env/bin/smt", SMTLOCK_LAZY_IMPORTS="0") == {"collections": True, "frozen": False,
                                                                   "collecting": True}
