"""Take a project's SMTLock for N short sections, logging "enter ID" / "leave ID" with O_APPEND.

    python sections.py PROJECT LOG SECTIONS READY_FD GO_FD [fork CHILDREN]

With ``fork CHILDREN`` the process makes one SMTLock, uses it once, then forks CHILDREN processes
(multiprocessing's fork start method) that run the sections with that same lock object, released
together by a barrier. ``overlaps()`` in conftest counts sections that overlapped.
"""

import multiprocessing
import os
import sys

import smtlock


def sections(lock: smtlock.SMTLock, log: str, count: int, ident: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for _ in range(count):
        with lock:
            os.write(fd, f"enter {ident}\n".encode())
            sum(range(2000))  # a little work inside the section
            os.write(fd, f"leave {ident}\n".encode())
    os.close(fd)


def child(lock: smtlock.SMTLock, log: str, count: int, barrier) -> None:
    barrier.wait()
    sections(lock, log, count, f"child-{os.getpid()}")


def main(argv: list) -> None:
    project, log, count, ready_fd, go_fd = argv[:5]
    lock = smtlock.SMTLock(project)
    os.write(int(ready_fd), b"r")
    os.read(int(go_fd), 1)
    if argv[5:6] == ["fork"]:
        children = int(argv[6])
        with lock:  # the parent uses the lock before forking: its descriptor is open
            pass
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(children)
        procs = [context.Process(target=child, args=(lock, log, int(count), barrier)) for _ in range(children)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        sys.exit(max(proc.exitcode for proc in procs))
    sections(lock, log, int(count), str(os.getpid()))


if __name__ == "__main__":
    main(sys.argv[1:])
