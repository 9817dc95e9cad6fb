"""Chaos: ``with SMTLock`` blocks from two project folders through PgBouncer while jobs are killed and
stopped at random and PgBouncer and the server restart; then every acknowledged write is looked for.

    python benchmarks/chaos.py [--seconds 150] [--jobs 12] [--seed 1] [--work 0.2] [--smtlock DIR]
                                                                   (adds to benchmarks/chaos.json)

PgBouncer 1.18+ (Debian's) in transaction pooling (pool of 5) in front of a throwaway PostgreSQL; two
project folders on one database stand for two hosts. ``--jobs`` jobs run at a time, each making one
record (``new_record``: a write in smtlock's own hold) and then, in ``with SMTLock(project)``, logging
"enter"/"leave" (O_APPEND) around ``--work`` seconds of work and one more write of it (its outcome).
Every call that returned is logged as acknowledged. Meanwhile, every 1-3 s a random job is SIGKILLed or
SIGSTOPped for 0.5-4 s; PgBouncer is SIGKILLed and restarted every 8-16 s; the server restarted (fast or
immediate) every 12-20 s. At the end: acknowledged writes missing from the store (must be 0), labels
stored twice (0), overlapping blocks among those that ended without LockLost (0), and how many ended
with LockLost. Needs root only to run the server and PgBouncer as ``nobody``. Not a speed figure: a
correctness run.
``--smtlock DIR`` runs the jobs with the smtlock of another checkout (``git worktree add``), to compare.
"""
import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import Bouncer, Cluster  # noqa: E402

from smtlock._harness.burst import make_project  # noqa: E402

JOB = r"""
import os, sys
import smtlock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

import time
folder, label, blocks, acks, work = sys.argv[1:6]
LockLost = getattr(smtlock, "LockLost", ())  # an smtlock from before LockLost: nothing to catch
os.chdir(folder)
def note(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (text + "\n").encode())
    os.close(fd)
project = load_project()
record = project.new_record(parameters=SimpleParameterSet({"label": label}), main_file="main.py", label=label)
note(acks, f"new {record.label}")
try:
    with smtlock.SMTLock(project):
        note(blocks, f"enter {label}")
        time.sleep(float(work))  # the block's work
        record.outcome = "in block"
        try:
            project.add_record(record)
            note(acks, f"block {record.label}")
        except LockLost:
            note(acks, f"writelost {label}")
        note(blocks, f"leave {label}")
    note(acks, f"clean {label}")
except LockLost:
    note(acks, f"lost {label}")
"""


def overlapping(lines: list) -> int:
    """Enters that came while another block was inside (the overlap verifier of tests/conftest.py)."""
    inside, count = None, 0
    for line in lines:
        event, who = line.split()
        if event == "enter":
            count += inside is not None
            inside = who
        elif inside == who:
            inside = None
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=float, default=0.2, help="seconds of work inside each block")
    parser.add_argument("--smtlock", help="run the jobs with the smtlock of this checkout")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the server and PgBouncer are stopped
    tmp = Path(tempfile.mkdtemp(prefix="smtlock-chaos-"))
    blocks, acks = tmp / "blocks.log", tmp / "acks.log"
    server = Cluster()
    bouncer = None
    running: dict = {}  # label -> Popen
    stopped: dict = {}  # label -> when to continue it
    counts = {"jobs": 0, "killed": 0, "stopped": 0, "pooler_restarts": 0, "server_restarts": 0}
    try:
        server.sql("CREATE ROLE smt LOGIN PASSWORD 'chaos' CREATEDB")
        server.sql("CREATE DATABASE chaos OWNER smt")
        bouncer = Bouncer(server, {"smt": "chaos"}, {"chaos": ("chaos", "transaction")}, pool_size=5)
        uri = bouncer.uri("smt", "chaos", "chaos")
        folders = [make_project(tmp / name, uri) for name in ("host-a", "host-b")]
        env = {**os.environ, "PYTHONPATH": args.smtlock} if args.smtlock else None
        start = time.monotonic()
        next_fault = start + rng.uniform(1, 3)
        next_pooler = start + rng.uniform(8, 16)
        next_server = start + rng.uniform(12, 20)
        while time.monotonic() - start < args.seconds:
            now = time.monotonic()
            for label, proc in list(running.items()):
                if proc.poll() is not None and label not in stopped:
                    del running[label]
            while len(running) < args.jobs:
                label = f"job{counts['jobs']}"
                counts["jobs"] += 1
                folder = folders[counts["jobs"] % 2]
                running[label] = subprocess.Popen(
                    [sys.executable, "-c", JOB, str(folder), label, str(blocks), str(acks), str(args.work)],
                    stdout=subprocess.DEVNULL, stderr=open(tmp / f"{label}.err", "w"), env=env, cwd=folder)
            for label, until in list(stopped.items()):
                if now >= until:
                    running[label].send_signal(signal.SIGCONT)
                    del stopped[label]
            if now >= next_fault:
                label = rng.choice([name for name in running if name not in stopped])
                if rng.random() < 0.5:
                    running[label].kill()
                    counts["killed"] += 1
                else:
                    running[label].send_signal(signal.SIGSTOP)
                    stopped[label] = now + rng.uniform(0.5, 4)
                    counts["stopped"] += 1
                next_fault = now + rng.uniform(1, 3)
            if now >= next_pooler:
                bouncer.crash_and_restart()
                counts["pooler_restarts"] += 1
                next_pooler = time.monotonic() + rng.uniform(8, 16)
            if now >= next_server:
                server.restart(rng.choice(["fast", "immediate"]))
                counts["server_restarts"] += 1
                next_server = time.monotonic() + rng.uniform(12, 20)
            time.sleep(0.1)
        for label in stopped:
            running[label].send_signal(signal.SIGCONT)
        hung = 0
        for proc in running.values():
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                hung += 1
                proc.kill()
        stored = server.sql("SELECT label, outcome FROM django_store_record", "chaos")
        doctor = subprocess.run([os.path.join(os.path.dirname(sys.executable), "smtlock"), "doctor", "--json",
                                 str(folders[0])], capture_output=True, text=True)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        if bouncer is not None:
            bouncer.stop()
        server.stop()
    notes = [line.split() for line in acks.read_text().splitlines()] if acks.exists() else []
    labels = [label for label, _ in stored]
    outcome = dict(stored)
    clean = {who for kind, who in notes if kind == "clean"}
    kept = [line for line in blocks.read_text().splitlines() if line.split()[1] in clean] if blocks.exists() else []
    findings = json.loads(doctor.stdout)["findings"] if doctor.stdout.strip() else []
    results = {
        **counts, "hung": hung,
        "acknowledged_writes": sum(kind in ("new", "block") for kind, _ in notes),
        "lost_acknowledged": sum(1 for kind, who in notes if (kind == "new" and who not in outcome)
                                 or (kind == "block" and outcome.get(who) != "in block")),
        "stored_twice": len(labels) - len(set(labels)),
        "blocks_clean": len(clean),
        "blocks_lock_lost": sum(kind == "lost" for kind, _ in notes),
        "writes_refused_lock_lost": sum(kind == "writelost" for kind, _ in notes),
        "overlapping_clean_blocks": overlapping(kept),
        "overlapping_all_finished_blocks": overlapping(
            [line for line in blocks.read_text().splitlines()
             if line.split()[1] in clean | {w for k, w in notes if k == "lost"}]) if blocks.exists() else 0,
        "doctor": sorted({f["status"] for f in findings}),
    }
    print(json.dumps(results, indent=1))
    out = HERE / "chaos.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[time.strftime("%Y-%m-%d %H:%M")] = {
        "command": f"python benchmarks/chaos.py --seconds {args.seconds:g} --jobs {args.jobs} --seed {args.seed} "
                   f"--work {args.work:g}" + (f" --smtlock {args.smtlock}" if args.smtlock else ""),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}", **results}
    out.write_text(json.dumps(runs, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
