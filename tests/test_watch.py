"""The kernel's watch of the memo's files (smtlock._sumatra.watch): each kind of change to a watched
path reaches the guard, as a path to compare again or as a broken guard; nothing else does; and no
guard is given where the kernel would not see every change (a forked child, a FUSE mount, a mount
made over a folder on the way)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, List, Optional

import pytest

from smtlock._sumatra import watch
from smtlock._sumatra.provenance import _maybe_importable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def _compared(made: watch.Guard) -> Optional[List[str]]:
    """The paths the guard asks to compare (None: broken), each found unchanged."""
    asked: List[str] = []
    held = made.holds(lambda path: asked.append(path) is None)
    return None if held is None else sorted(asked)


@pytest.fixture
def tree(tmp_path: Path) -> Any:
    """site/pkg/mod.py and site/pkg/other.py, watched as files; site/ watched as a folder on sys.path."""
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    mod, other = site / "pkg" / "mod.py", site / "pkg" / "other.py"
    mod.write_text("A = 1\n")
    other.write_text("B = 1\n")
    made = watch.guard([str(mod), str(other)], [str(site)], _maybe_importable)
    assert made is not None and _compared(made) == []
    return tmp_path, site, mod, other, made


def test_an_unchanged_tree_asks_nothing(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    mod.read_text()  # reading is no change
    (tmp / "elsewhere.txt").write_text("x")  # nor a file made beside the tree
    assert _compared(made) == []


def test_a_file_written_in_place_is_compared_again(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    with open(mod, "r+") as file:
        file.write("A = 2\n")
    assert _compared(made) == [str(mod)]
    assert _compared(made) == []  # once compared, unchanged since


def test_a_file_written_through_a_hard_link_elsewhere_is_compared_again(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    cache = tmp / "cache"  # uv and pip install by hard-linking from a cache; an edit there is one here
    cache.mkdir()
    os.link(mod, cache / "mod.py")
    _compared(made)
    with open(cache / "mod.py", "r+") as file:
        file.write("A = 3\n")
    assert _compared(made) == [str(mod)]


def test_a_file_replaced_by_another_breaks_the_guard(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    (tmp / "new.py").write_text("A = 4\n")
    os.replace(tmp / "new.py", mod)  # an editor's save: another file under the name
    assert _compared(made) is None


def test_a_touch_breaks_the_guard(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    os.utime(other, ns=(1, 1))
    assert _compared(made) is None


def test_a_link_on_the_way_pointed_elsewhere_breaks_the_guard(tmp_path: Path) -> None:
    for version in ("a", "b"):
        (tmp_path / version / "pkg").mkdir(parents=True)
        (tmp_path / version / "pkg" / "mod.py").write_text(f"V = {version!r}\n")
    os.symlink(tmp_path / "a", tmp_path / "env")  # a venv's lib64, a module system's "current"
    made = watch.guard([str(tmp_path / "env" / "pkg" / "mod.py")], [], _maybe_importable)
    assert made is not None and _compared(made) == []
    (tmp_path / "a" / "pkg" / "mod.py").write_text("V = 'a2'\n")  # the file the link leads to
    assert _compared(made) == [str(tmp_path / "env" / "pkg" / "mod.py")]
    os.symlink(tmp_path / "b", tmp_path / "env2")
    os.replace(tmp_path / "env2", tmp_path / "env")
    assert _compared(made) is None


def test_a_relative_link_is_followed_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mod.py").write_text("X = 1\n")
    (tmp_path / "links").mkdir()
    os.symlink("../real/mod.py", tmp_path / "links" / "mod.py")
    made = watch.guard([str(tmp_path / "links" / "mod.py")], [], _maybe_importable)
    assert made is not None and _compared(made) == []
    (tmp_path / "real" / "mod.py").write_text("X = 2\n")
    assert _compared(made) == [str(tmp_path / "links" / "mod.py")]


def test_an_absent_file_that_appears_breaks_the_guard(tmp_path: Path) -> None:
    made = watch.guard([str(tmp_path / "not" / "yet" / "__init__.py")], [], _maybe_importable)
    assert made is not None and _compared(made) == []
    (tmp_path / "not").mkdir()
    assert _compared(made) is None


@pytest.mark.parametrize("name, importable", [("new.py", True), ("newpkg/", True), ("data", True),
                                              ("ext.cpython-311-x86_64-linux-gnu.so", True),
                                              ("notes.txt", False), ("run.log", False)])
def test_a_name_made_in_a_folder_on_sys_path(tree: Any, name: str, importable: bool) -> None:
    tmp, site, mod, other, made = tree
    if name.endswith("/"):
        (site / name).mkdir()
    else:
        (site / name).write_text("")
    assert _compared(made) == ([str(site)] if importable else [])
    (site / name.rstrip("/")).rename(tmp / "moved")  # and gone again
    assert _compared(made) == ([str(site)] if importable else [])


def test_a_forked_child_has_its_own_watch(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's guard is of no use here, a guard of its own is
        try:
            inherited = _compared(made)
            own = watch.guard([str(mod)], [], _maybe_importable)
            own_ok = own is not None and _compared(own) == []
            mod.write_text("A = 5\n")
            seen = own is not None and _compared(own) == [str(mod)]
            os.write(write, f"{inherited} {own_ok} {seen}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as said:
        answer = said.read()
    os.waitpid(pid, 0)
    assert answer == "None True True"
    assert _compared(made) == [str(mod)]  # the parent saw the child's change too


def _as_root_in_a_mount_namespace(script: str) -> str:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare: a mount namespace of the test's own")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_mount_made_over_a_folder_on_the_way_breaks_the_guard(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    said = _as_root_in_a_mount_namespace(f"""
        import subprocess
        from smtlock._sumatra import watch
        from smtlock._sumatra.provenance import _maybe_importable
        made = watch.guard([{str(mod)!r}], [], _maybe_importable)
        print(made is not None and made.holds(lambda path: True))
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", {str(site / "pkg")!r}], check=True)
        print(made.holds(lambda path: True))
    """)
    assert said.split() == ["True", "None"]


def test_no_guard_on_a_fuse_mount(tmp_path: Path) -> None:
    """Where other hosts (or the FUSE server) may change a file without an event here."""
    if not shutil.which("bindfs"):
        pytest.skip("needs bindfs")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "mod.py").write_text("X = 1\n")
    said = _as_root_in_a_mount_namespace(f"""
        import subprocess, time
        from smtlock._sumatra import watch
        from smtlock._sumatra.provenance import _maybe_importable
        fs = subprocess.Popen(["bindfs", "-f", {str(shared)!r}, {str(shared)!r}])
        try:
            while not any(line.split()[1] == {str(shared)!r} and line.split()[2].startswith("fuse")
                          for line in open("/proc/self/mounts")):
                assert fs.poll() is None, "bindfs ended"
                time.sleep(0.05)  # waiting for the mount to appear, not synchronising with a guard
            print(watch.guard([{str(shared / "mod.py")!r}], [], _maybe_importable))
        finally:
            subprocess.run(["fusermount", "-u", {str(shared)!r}])
            fs.wait()
    """)
    assert said == "None"


def test_a_folder_watched_for_two_guards_keeps_both_kinds_of_event(tree: Any) -> None:
    """The provenance memo watches a folder on sys.path for its names; version control may watch the
    same folder as a path of its own (a folder of tracked files). Neither watch takes the other's
    events away."""
    tmp, site, mod, other, made = tree
    presence = watch.guard([str(site)], [], _maybe_importable)
    assert presence is not None and _compared(presence) == []
    (tmp / "json.py").write_text("")
    os.link(tmp / "json.py", site / "json.py")  # as uv installs: a module made by a hard link
    assert _compared(made) == [str(site)]


def test_a_path_through_a_link_and_up_is_the_kernels(tmp_path: Path) -> None:
    """``link/..`` is the parent of the link's target, as the kernel resolves it (git's relative
    include.path from a .git that is a link), not the folder holding the link."""
    (tmp_path / "real" / "git").mkdir(parents=True)
    (tmp_path / "real" / "shared.cfg").write_text("[a]\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "shared.cfg").write_text("[b]\n")
    os.symlink(tmp_path / "real" / "git", tmp_path / "work" / "gitlink")
    path = str(tmp_path / "work" / "gitlink" / ".." / "shared.cfg")
    made = watch.guard([path], [], _maybe_importable)
    assert made is not None and _compared(made) == []
    with open(tmp_path / "real" / "shared.cfg", "a") as file:  # the file a stat of the path finds
        file.write("x = 1\n")
    assert _compared(made) == [path]


def test_a_dangling_link_in_a_folder_on_sys_path_whose_target_is_made(tmp_path: Path) -> None:
    """A link named as a package, pointing at a folder not made yet: making the folder makes the
    package importable with no event in the folder on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    os.symlink(tmp_path / "later", site / "mypkg")
    made = watch.guard([], [str(site)], _maybe_importable)
    assert made is not None and _compared(made) == []
    (tmp_path / "later").mkdir()
    assert _compared(made) is None


def test_a_path_below_a_file_is_watched_until_the_file_becomes_a_folder(tmp_path: Path) -> None:
    """A dependency that is a module file: version control watches ``<file>/.git`` above it."""
    module = tmp_path / "mod.py"
    module.write_text("X = 1\n")
    made = watch.guard([str(module / ".git")], [], _maybe_importable)
    assert made is not None and _compared(made) == []
    module.unlink()
    module.mkdir()
    (module / ".git").mkdir()
    assert _compared(made) is None


def test_a_child_forked_while_a_check_runs_gets_no_answer_and_does_not_wait(tree: Any) -> None:
    """Another thread of the parent was checking the guard at the fork: its lock is held for good in
    the child, which must neither wait for it nor use the parent's watch."""
    tmp, site, mod, other, made = tree
    read, write = os.pipe()
    with made._checking:  # as another thread's check holds it
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write, str(_compared(made)).encode())
            finally:
                os._exit(0)
    os.close(write)
    if not select.select([read], [], [], 120)[0]:  # a child waiting for the lock never answers
        os.kill(pid, signal.SIGKILL)
    with os.fdopen(read) as said:
        answer = said.read()
    os.waitpid(pid, 0)
    assert answer == "None"


def test_a_guard_made_again_at_every_record_does_not_grow_the_watch(tree: Any) -> None:
    """A process whose watched files change at every record (a simulation writing a module it
    imports) makes a new guard each time; the old guards' registrations go with them."""
    tmp, site, mod, other, made = tree
    for _ in range(50):
        again = watch.guard([str(mod)], [str(site)], _maybe_importable)
        assert again is not None
    current = watch._current()
    assert current is not None
    assert max(len(registered) for registered in current._contents.values()) <= 3
    assert max(len(registered) for registered in current._listings.values()) <= 3


@pytest.mark.parametrize("name", ["laterpkg", "data.d"])
def test_a_link_made_in_a_folder_on_sys_path_breaks_the_guard(tree: Any, name: str) -> None:
    """A link is importable by where it leads (a folder not made yet: a package once it is), which
    the folder's own events do not tell: the guard watches it again, the link's way with it."""
    tmp, site, mod, other, made = tree
    os.symlink(tmp / "later", site / name)
    assert _compared(made) is None


def test_a_file_written_through_a_link_in_a_folder_on_sys_path_asks_nothing(tmp_path: Path) -> None:
    """The links of a folder on sys.path are watched for where they lead, not for their content: a
    log the job writes through one is no change to compare."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (elsewhere / "run.log").write_text("")
    os.symlink(elsewhere / "run.log", site / "run.log")
    made = watch.guard([], [str(site)], _maybe_importable)
    assert made is not None and _compared(made) == []
    with open(site / "run.log", "a") as log:
        log.write("step 1\n")
    assert _compared(made) == []


def test_a_check_interrupted_leaves_the_guard_broken(tree: Any) -> None:
    tmp, site, mod, other, made = tree
    with open(mod, "a") as file:
        file.write("# edited\n")

    def interrupted(path: str) -> bool:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        made.holds(interrupted)
    assert _compared(made) is None  # not "nothing changed": the edit was never compared


def test_a_path_no_guard_can_watch_is_not_tried_at_every_record(tmp_path: Path) -> None:
    """A guard that cannot be made (here a path too deep to resolve; elsewhere a file on NFS) is given
    up at once the next time, before any other path is watched for it."""
    deep = str(tmp_path.joinpath(*["d"] * 1200, "mod.py"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mod.py").write_text("")
    assert watch.guard([deep, str(tmp_path / "a" / "mod.py")], [], _maybe_importable) is None
    current = watch._current()
    assert current is not None
    watched = set(current._watched)
    assert watch.guard([deep, str(tmp_path / "b" / "mod.py")], [], _maybe_importable) is None
    assert current._watched == watched  # b's folder and file were not watched for nothing
