"""What every Python process of an environment with smtlock gets at start (``smtlock.pth``, which runs
``_smtlock_startup``): Sumatra's dependency ``parameters`` no longer imports ``scipy.stats`` when
``smt`` starts, and a parameter file's distribution draws what it drew. The hook is whatever this
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
seen = {"hook": [type(f).__name__ for f in sys.meta_path].count("LazyScipyStats"),
        "stats_at_start": "scipy.stats" in sys.modules, "have_scipy": random.have_scipy}
parameters = build_parameters(sys.argv[1])
import numpy
numpy.random.seed(7)
seen["draws"] = [float(x) for x in parameters["rate"].next(4)]
seen["pretty"] = parameters.pretty()
seen["stats_at_end"] = type(sys.modules["scipy.stats"]).__name__
import scipy.stats
seen["norm"] = float(scipy.stats.norm.cdf(0.5))
print(json.dumps(seen))
'''


def _smt(tmp_path: Path, **env: str) -> dict:
    params = tmp_path / "sweep.param"
    params.write_text('{"rate": GammaDist(mean=2.0, std=0.5), "n": 3}\n')
    done = subprocess.run([sys.executable, "-c", SMT, str(params)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_smt_starts_without_scipy_stats_and_a_distribution_draws_what_it_drew(tmp_path: Path) -> None:
    lazy = _smt(tmp_path)
    assert lazy["hook"] == 1, "smtlock.pth is not installed in this environment (pip install -e . adds it)"
    assert lazy["stats_at_start"] is False and lazy["have_scipy"] is True
    assert lazy["stats_at_end"] == "module"  # the real one, imported at the first draw
    eager = _smt(tmp_path, SMTLOCK_LAZY_SCIPY="0")  # plain Python: parameters imports scipy.stats
    assert eager["hook"] == 0 and eager["stats_at_start"] is True
    assert {k: lazy[k] for k in ("have_scipy", "draws", "pretty", "norm")} == \
        {k: eager[k] for k in ("have_scipy", "draws", "pretty", "norm")}


def test_the_hook_imports_nothing_a_starting_python_has_not_imported_already() -> None:
    """It runs in every process of the environment (pip, a notebook kernel, each job): it must cost
    nothing there. ``-S`` and ``import site``: what a start loads, without the ``.pth`` files of
    site-packages."""
    code = ("import site, sys; before = set(sys.modules); import _smtlock_startup; _smtlock_startup.install(); "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(_smtlock_startup.__file__).parent)})
    assert json.loads(done.stdout.replace("'", '"')) == ["_smtlock_startup"]
