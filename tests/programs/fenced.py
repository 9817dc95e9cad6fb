"""A ``with SMTLock(project)`` block that a fault may outlive; what it saw, as one JSON line.

    python fenced.py PROJECT LOG NAME

In one block: logs "enter NAME" to LOG (O_APPEND), makes record NAME-before (``new_record`` stores
it), prints "held" and waits for a line on stdin. On "go" it goes on at once; on "lost" it first waits
(up to 120 s) until ``lock.lost`` says the hold is gone. Then it makes record NAME-after, logs "leave
NAME" and leaves the block. The JSON line says whether it
saw the loss before writing, what the second write did and what leaving did.
"""

import json
import os
import sys
import time

from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

import smtlock


def main(folder: str, log: str, name: str) -> None:
    os.chdir(folder)
    project = load_project()

    def record(part: str) -> None:
        project.new_record(parameters=SimpleParameterSet({"part": part}), main_file="main.py", label=f"{name}-{part}")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seen = {"noticed": None, "write": None, "exit": "ok"}
    lock = smtlock.SMTLock(project)
    try:
        with lock:
            os.write(fd, f"enter {name}\n".encode())
            record("before")
            print("held", flush=True)
            if sys.stdin.readline().strip() == "lost":
                deadline = time.monotonic() + 120
                while lock.lost is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            seen["noticed"] = str(lock.lost) if lock.lost else None
            try:
                record("after")
                seen["write"] = "stored"
            except smtlock.LockLost as lost:
                seen["write"] = f"LockLost: {lost}"
            os.write(fd, f"leave {name}\n".encode())
    except smtlock.LockLost as lost:
        seen["exit"] = f"LockLost: {lost}"
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
