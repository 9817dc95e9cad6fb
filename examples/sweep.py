"""A parameter sweep that records each run, safe when many copies of it start at once.

Run it inside a Sumatra project (the file must be committed): ``python sweep.py 0 1 2``.
The simulation runs outside the lock; only the record write and the project save are inside it.
"""
import sys

from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

from smtlock import SMTLock


def simulate(x: float) -> float:
    return sum(i * x for i in range(10_000))


project = load_project()
for value in sys.argv[1:] or ["1"]:
    record = project.new_record(parameters=SimpleParameterSet({"x": float(value)}),
                                main_file="sweep.py", reason="example sweep")
    record.outcome = f"sum = {simulate(float(value))}"        # expensive work: no lock held
    with SMTLock(project):
        project.add_record(record)                               # updates the record new_record wrote
        project.save()
    print(record.label)
