"""Launchers that run calls in threads or under an event loop: a thread pool, dask.distributed, a notebook.

Each records every call exactly once, under its own label, with its own output.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import run_python
from nbclient import NotebookClient

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
RECORDS = """
import json
from sumatra.formatting import record2dict
from sumatra.projects import load_project
print(json.dumps([dict(record2dict(r), x=r.parameters.as_dict()["x"]) for r in load_project().find_records()]))
"""
# what differs between two records of one program by nature; every other field must be the same
PER_CALL = {"label", "timestamp", "duration", "parameters", "stdout_stderr", "output_data", "tags", "outcome",
            "x"}

THREADS = '''
"""8 calls in ThreadPoolExecutor(4), the 4 running calls printing their lines in turn; then one in the main thread."""
import json, threading
from concurrent.futures import ThreadPoolExecutor
from smtlock import SMTLock, current_label, smt_logged

together = threading.Barrier(4, timeout=120)  # the timeout only stops a failed run from hanging

@smt_logged(tags=["threads"])
def simulate(x, lines=3):
    for n in range(lines):
        if x >= 0:
            together.wait()  # the 4 running calls print each line at once: the lines interleave
        print(f"x={x} line={n}\\n", end="")  # one write: the terminal shows whole lines too
    with SMTLock("."), SMTLock("."):  # re-entrant in each thread; the threads take turns
        pass
    return current_label()

with ThreadPoolExecutor(4) as pool:  # the first records of the process: Django is set up in a thread
    labels = list(pool.map(simulate, range(8)))
main = simulate(-1, lines=1)
print("labels " + json.dumps([main] + labels), flush=True)
'''

DASK = '''
"""32 calls mapped on a LocalCluster of 2 worker processes x 2 threads; one task fails in smtlock."""
import json, sys
from distributed import Client, Event, LocalCluster, Lock, Variable
from smtlock import NoProjectError, current_label, smt_logged

@smt_logged(tags=["dask"])
def simulate(x):
    with Lock("arrived"):  # the first 4 calls, one per worker thread, go on together
        arrived = Variable("arrived").get() + 1
        Variable("arrived").set(arrived)
    if arrived == 4:
        Event("go").set()
    if not Event("go").wait(timeout=120):  # the timeout only stops a failed run from hanging
        raise RuntimeError("the first 4 calls did not all start")
    print(f"x={x}")
    return current_label()

@smt_logged(project=sys.argv[1])  # a folder that is no project
def elsewhere(x):
    return x

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        Variable("arrived").set(0)
        labels = client.gather(client.map(simulate, range(1, 33)))
        try:
            client.submit(elsewhere, 1).result()
        except NoProjectError as err:
            print("error " + json.dumps([type(err).__module__, type(err).__name__]), flush=True)
    print("labels " + json.dumps(labels), flush=True)
'''


def _commit(project: Path, name: str, text: str) -> None:
    (project / name).write_text(text)
    subprocess.run(GIT + ["add", name], cwd=project, check=True)
    subprocess.run(GIT + ["commit", "-qm", name], cwd=project, check=True)


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a program in its own process group; whatever it started is stopped with it, also on failure."""
    run = subprocess.Popen([sys.executable, *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        out, err = run.communicate(timeout=600)
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)  # the group of this one process: nothing else
        except ProcessLookupError:
            pass
        run.wait()
    return subprocess.CompletedProcess(run.args, run.returncode, out, err)


def _labels(stdout: str) -> list:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("labels "))[7:])


def _records(project: Path) -> list:
    return json.loads(run_python(RECORDS, project).stdout)


def _figures(records: list) -> str:
    """What a failed run kept, for its message: records, distinct labels, finished."""
    finished = sum("_finished_" in r["tags"] for r in records)
    return f"records {len(records)}, distinct labels {len({r['label'] for r in records})}, finished {finished}"


def test_a_thread_pool_records_each_call_with_its_own_lines(project: Path) -> None:
    _commit(project, "threads.py", THREADS)
    done = _run(project, "threads.py")
    records = _records(project)
    assert done.returncode == 0, (_figures(records), done.stderr[-3000:])
    labels = _labels(done.stdout)
    assert sorted(r["x"] for r in records) == list(range(-1, 8))  # each call once, the main thread's too
    assert sorted(r["label"] for r in records) == sorted(labels) and len(set(labels)) == 9
    for r in records:
        lines = 1 if r["x"] < 0 else 3
        assert r["stdout_stderr"] == "".join(f"x={r['x']} line={n}\n" for n in range(lines))  # its own, all
        assert {"threads", "_finished_"} <= set(r["tags"])
        for n in range(lines):
            assert f"x={r['x']} line={n}\n" in done.stdout  # still shown
    main = next(r for r in records if r["x"] < 0)
    for r in records:  # a record made in a thread holds what Sumatra records in the main thread
        assert {k: v for k, v in r.items() if k not in PER_CALL} == {k: v for k, v in main.items()
                                                                      if k not in PER_CALL}


@pytest.mark.burst
def test_a_dask_cluster_records_each_task_once(project: Path, tmp_path: Path) -> None:
    _commit(project, "sweep_dask.py", DASK)
    done = _run(project, "sweep_dask.py", str(tmp_path))
    records = _records(project)
    assert done.returncode == 0, (_figures(records), done.stderr[-3000:])
    labels = _labels(done.stdout)
    assert sorted(r["x"] for r in records) == list(range(1, 33))
    assert sorted(r["label"] for r in records) == sorted(labels) and len(set(labels)) == 32
    for r in records:
        assert {"dask", "_finished_"} <= set(r["tags"]) and r["stdout_stderr"] == f"x={r['x']}\n"
    assert 'error ["smtlock.errors", "NoProjectError"]' in done.stdout  # reached the client as itself


def test_a_notebook_records_each_call_of_a_cell(project: Path) -> None:
    cells = ["from smtlock import current_label, smt_logged\n\n@smt_logged(tags=['notebook'])\n"
             "def simulate(x):\n    print(f'x={x}')\n    return current_label()"]
    cells += [f"simulate({x})" for x in (1, 2, 3)]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(notebook, project / "sweep.ipynb")
    # nbclient starts the kernel (a real IPython kernel of this Python) and shuts it down, also on failure
    NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(project)}}).execute()
    outputs = [cell.outputs for cell in notebook.cells[1:]]
    errors = [o.get("evalue") for out in outputs for o in out if o.output_type == "error"]
    records = _records(project)
    assert not errors, (_figures(records), errors)
    labels = [next(o for o in out if o.output_type == "execute_result").data["text/plain"].strip("'")
              for out in outputs]
    # still shown in the cell: the kernel sends a print in one or more stream messages (it flushes on a
    # timer, so "x=2" and its newline may come apart), which the notebook shows as one text
    assert ["".join(o.text for o in out if o.output_type == "stream" and o.name == "stdout")
            for out in outputs] == [f"x={x}\n" for x in (1, 2, 3)]
    assert sorted(r["x"] for r in records) == [1, 2, 3]
    assert sorted(r["label"] for r in records) == sorted(labels) and len(set(labels)) == 3
    for r in records:
        assert {"notebook", "_finished_"} <= set(r["tags"]) and r["stdout_stderr"] == f"x={r['x']}\n"
