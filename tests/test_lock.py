"""SMTLock: re-entrancy, threads, timeout message, a holder killed with SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import PROGRAMS, overlaps

import smtlock
from smtlock import LockTimeout, SMTLock, SMTLockError
from smtlock._harness.burst import start_together
from smtlock.errors import LockFileError, NoProjectError

HOLDER = """
import sys, smtlock
lock = smtlock.SMTLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()   # hold until the test closes our stdin (or kills us)
"""


@pytest.fixture
def bare_project(tmp_path: Path) -> Path:
    """A folder with an empty .smt: all SMTLock needs."""
    (tmp_path / ".smt").mkdir()
    return tmp_path


@pytest.fixture
def holder(bare_project: Path):
    """Another process that holds the project's lock until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(bare_project)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_lock_file_lives_in_smt_and_stays(bare_project: Path) -> None:
    lock = SMTLock(bare_project / "some" / "sub" / "folder")
    with lock:
        assert lock.is_locked
    assert not lock.is_locked
    assert Path(lock.lock_file) == bare_project / ".smt" / "smtlock.lock"
    assert Path(lock.lock_file).exists()  # never deleted: see filelock issues #27, #31


def test_reentrant_within_a_process(bare_project: Path) -> None:
    outer, inner = SMTLock(bare_project), SMTLock(bare_project)
    with outer:
        with inner:  # a Sumatra call that locks inside the user's `with` must not deadlock
            assert inner.is_locked
        assert outer.is_locked  # the inner release did not let go of the outer hold
    assert not outer.is_locked


def test_acquire_returns_a_context_that_releases_once(bare_project: Path) -> None:
    lock = SMTLock(bare_project)
    with lock.acquire(timeout=1) as held:
        assert held is lock and lock.is_locked
    assert not lock.is_locked


def test_another_process_waits_and_times_out_naming_the_holder(bare_project: Path, holder) -> None:
    lock = SMTLock(bare_project, timeout=0.2)
    with pytest.raises(LockTimeout) as caught:
        lock.acquire()
    err = caught.value
    assert isinstance(err, TimeoutError) and isinstance(err, SMTLockError)
    assert err.lock_file == lock.lock_file
    assert f"pid {holder.pid} on " in str(err) and lock.lock_file in str(err)
    assert not lock.is_locked


def test_holder_killed_with_sigkill_releases_at_once(bare_project: Path, holder) -> None:
    with pytest.raises(LockTimeout):
        SMTLock(bare_project).acquire(timeout=0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with SMTLock(bare_project).acquire(timeout=0):  # one try, no waiting: the kernel freed it
        pass


def test_holder_released_normally_lets_the_waiter_in(bare_project: Path, holder) -> None:
    holder.stdin.close()
    holder.wait()
    with SMTLock(bare_project).acquire(timeout=0) as lock:
        assert lock.holder() == f"pid {os.getpid()} on " + lock.holder().split(" on ", 1)[1]


def test_threads_of_one_process_take_turns(bare_project: Path) -> None:
    lock = SMTLock(bare_project)
    taken, go_on = threading.Event(), threading.Event()
    seen = []

    def hold() -> None:
        with SMTLock(bare_project):
            taken.set()
            go_on.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait()
    with pytest.raises(LockTimeout) as caught:
        lock.acquire(timeout=0.1)
    seen.append(str(caught.value))
    go_on.set()
    thread.join()
    with lock.acquire(timeout=0):
        pass
    assert "another thread of this process" in seen[0]


def test_threads_released_together_never_overlap_and_each_reenters(bare_project: Path, tmp_path: Path) -> None:
    """4 threads x 25 sections, released by a barrier; each holder logs enter/leave with O_APPEND,
    re-entering the lock inside its section (as a write inside a user's ``with`` block does)."""
    log = tmp_path / "sections.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    start = threading.Barrier(4)
    errors = []

    def sections(who: int) -> None:
        try:
            start.wait(timeout=120)
            for n in range(25):
                with SMTLock(bare_project):
                    os.write(fd, f"enter {who}.{n}\n".encode())
                    with SMTLock(bare_project):  # re-entrant in the thread that holds it
                        pass
                    os.write(fd, f"leave {who}.{n}\n".encode())
        except BaseException as err:  # reported by the test, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=sections, args=(who,)) for who in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(fd)
    assert errors == []
    assert overlaps(log) == 0 and log.read_text().count("enter ") == 100


def test_not_in_a_project(tmp_path: Path) -> None:
    with pytest.raises(NoProjectError, match=r"no Sumatra project at .* \(run `smt init`\)"):
        SMTLock(tmp_path)


def test_unwritable_smt_names_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    (folder / ".smt").mkdir(parents=True)
    os.chmod(folder / ".smt", 0o555)
    code = ("import sys, smtlock\n"
            "try:\n    smtlock.SMTLock(sys.argv[1], timeout=1).acquire()\n"
            "except smtlock.SMTLockError as err:\n    print(type(err).__name__, err)\n")
    # root ignores file modes: when the tests run as root, the child drops that privilege
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    done = subprocess.run([*(as_user if os.geteuid() == 0 else []), sys.executable, "-c", code,
                           str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(LockFileError.__name__)
    assert str(folder / ".smt" / "smtlock.lock") in done.stdout and "writable" in done.stdout


def test_public_surface() -> None:
    assert set(smtlock.__all__) >= {"SMTLock", "smt_logged", "SMTLockError", "LockTimeout"}
    assert issubclass(smtlock.LockTimeout, TimeoutError)


SECTIONS = str(PROGRAMS / "sections.py")


def test_overlap_verifier_over_processes_released_together(bare_project: Path, tmp_path: Path) -> None:
    log = tmp_path / "sections.log"
    commands = [[sys.executable, SECTIONS, str(bare_project), str(log), "40", "{ready}", "{go}"]
                for _ in range(4)]
    burst = start_together(commands, [tmp_path / f"{i}.out" for i in range(4)])
    assert burst["codes"] == {i: 0 for i in range(4)}
    assert len(log.read_text().splitlines()) == 4 * 40 * 2
    assert overlaps(log) == 0


def test_overlap_verifier_catches_an_unlocked_section(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("enter a\nenter b\nleave a\nleave b\nenter a\nleave a\n")
    assert overlaps(log) == 1


def test_children_forked_from_a_parent_that_used_the_lock_exclude(bare_project: Path, tmp_path: Path) -> None:
    """A flock belongs to the open file description: children that reused the parent's descriptor all
    "held" the lock at once (hundreds of overlaps before smtlock opened one per process)."""
    log = tmp_path / "sections.log"
    commands = [[sys.executable, SECTIONS, str(bare_project), str(log), "30", "{ready}", "{go}", "fork", "6"]]
    burst = start_together(commands, [tmp_path / "out"])
    assert burst["codes"] == {0: 0}, (tmp_path / "out").read_text()
    assert len(log.read_text().splitlines()) == 6 * 30 * 2
    assert overlaps(log) == 0


FORK_WHILE_HOLDING = """
import os, sys, smtlock
lock = smtlock.SMTLock(sys.argv[1])
lock.acquire()
pid = os.fork()
if pid == 0:  # the child: its parent holds the lock
    try:
        lock.acquire(timeout=0)
        print("child got the lock", flush=True)
    except smtlock.LockTimeout:
        print("child waits", flush=True)
    os._exit(0) if sys.argv[2] == "_exit" else sys.exit(0)
os.waitpid(pid, 0)
print("held", lock.is_locked, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("child_exit", ["_exit", "exit"])
def test_a_forked_child_neither_holds_nor_frees_its_parents_lock(bare_project: Path, child_exit: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", FORK_WHILE_HOLDING, str(bare_project), child_exit],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "child waits"
        assert parent.stdout.readline().strip() == "held True"
        with pytest.raises(LockTimeout):  # the child has exited: the parent still holds the lock
            SMTLock(bare_project).acquire(timeout=0)
    finally:
        parent.kill()
        parent.wait()


FORK_AFTER_USE = """
import json, os, sys, threading, warnings
import smtlock
lock = smtlock.SMTLock(sys.argv[1])
with lock:
    pass
before = sorted(t.name for t in threading.enumerate())
with warnings.catch_warnings(record=True) as caught:  # 3.12+: a fork of a multi-threaded process warns
    warnings.simplefilter("always")
    for held in (False, True):  # after the lock was used, and while it is held
        if held:
            lock.acquire()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    stopped = [t.name for t in threading.enumerate() if t.name == "smtlock-watchdog"]
    assert lock.lost is None  # the lock's next use starts the watchdog again
    after = sorted(t.name for t in threading.enumerate())
    lock.release()
print(json.dumps([before, stopped, after, [str(w.message) for w in caught]]))
"""


def test_a_process_that_used_the_lock_forks_with_no_thread_of_ours(bare_project: Path) -> None:
    """The watchdog stops for a fork and starts again at the lock's next use: a pool forking its workers after
    the lock was used forks a process with the threads it had (Python 3.12+ warns at a fork of a
    multi-threaded process; Sumatra prints warnings on stdout: before, every fork after the first hold did)."""
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_USE, str(bare_project)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    before, stopped, after, warned = json.loads(done.stdout)
    assert before == after == ["MainThread", "smtlock-watchdog"] and stopped == []
    assert warned == []


def test_errors_pickle_as_themselves() -> None:
    """A pool sends a worker's exception to the parent by pickle."""
    import pickle
    errors = [LockTimeout("/p/.smt/smtlock.lock", 5, "pid 1 on node7 since T"), NoProjectError("no project"),
              LockFileError("cannot open"), smtlock.SettingError("bad"), smtlock.StoreError("down"),
              smtlock.ProjectFileError("torn"), smtlock.LockLost("advisory lock 7", "a restart", "T"),
              smtlock.TrackedStoreError([".smt/records"])]
    for err in errors:
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
    again = pickle.loads(pickle.dumps(errors[0]))
    assert (again.lock_file, again.timeout, again.holder) == ("/p/.smt/smtlock.lock", 5, "pid 1 on node7 since T")
    assert pickle.loads(pickle.dumps(errors[-1])).files == (".smt/records",)
    lost = pickle.loads(pickle.dumps(errors[-2]))
    assert (lost.lock, lost.why, lost.when) == ("advisory lock 7", "a restart", "T") and isinstance(lost, SMTLockError)


def test_bad_timeout_setting_names_the_variable(bare_project: Path) -> None:
    code = ("import smtlock, sys\ntry:\n    smtlock.SMTLock(sys.argv[1])\n"
            "except smtlock.SettingError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code, str(bare_project)], capture_output=True, text=True,
                          env={**os.environ, "SMTLOCK_TIMEOUT": "5s"})
    assert done.stdout.strip() == ("SMTLOCK_TIMEOUT='5s' is not a number of seconds "
                                   "(use e.g. SMTLOCK_TIMEOUT=300, 0.5, or -1 to wait forever)")


def test_import_on_windows_says_what_to_do() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; os.name = 'nt'; import smtlock"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: smtlock needs Linux or macOS (POSIX file locks); on Windows, run your jobs under "
        "WSL or on a Linux machine")
