"""Git's answers for a record, asked again only when something git reads to give them has changed.

Sumatra 0.8.1 asks git in 7 subprocesses for every record: ``check-ignore`` to find the working copy,
``is_dirty`` twice (4 ``git diff``), ``cat-file`` for the version and ``ls-files`` for the main file.
On a busy node they are the largest part of a short call. Here each answer still comes from
Sumatra's own method, run as upstream runs it; it is remembered for the repository, in this process,
and reused while an ``lstat`` shows unchanged everything git reads to give it, stamped before git was
asked:

- ``HEAD``, the ref it names, the packed refs and the reftable list (a commit, a checkout, a reset);
- the index (``add``, ``rm``, ``stash``, a commit);
- each tracked file, by ``lstat`` (inode, mode, size, modification and change times) and, when it
  changed within 2 s of its stamp, by content: a later write may share the timestamp (git's own
  "racily clean" rule);
- the ``.gitattributes`` and ``.gitignore`` of each folder with tracked files and of each path asked
  about, ``info/exclude`` and ``info/attributes``, the excludes and attributes files the
  configuration names, and every configuration file git reads (as ``git config --show-origin``
  lists them, includes too, and the usual places where one may appear);
- ``.git`` in each folder above a path asked about (a repository made or removed there).

The ``GIT_*`` environment, ``HOME`` and ``XDG_CONFIG_HOME`` are part of the key. A repository with a
submodule is asked every time (its state lives in another repository). A new untracked file changes
none of Sumatra's answers (``is_dirty`` and ``git diff HEAD`` leave untracked files out), and none is
reused across one: a folder's ``.gitignore`` is stamped. The memo is off with the provenance memo
(``SMTLOCK_MEMO=0``).

Each ``smt run`` job is a process of its own, so the stamps and answers are also kept in the project's
memo (``.smt/smtlock-memo/git-state-*.json``, with the paths found in no repository in
``git-outside-*.json``), keyed also by GitPython's package file and the ``git`` found on ``PATH`` (path,
size and modification time): the next process reads them when its own are missing or stale, and compares every stamp
before it uses an answer, as for its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import threading
import time
from importlib.machinery import PathFinder
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from . import provenance, watch

__all__ = ["remembered", "findrepo", "get_working_copy", "one_record", "counts"]

#: what this process did, for tests: states taken (git asked for its inputs), answers asked of git,
#: answers reused, comparisons the kernel's watch answered
counts: Dict[str, int] = {"states": 0, "asked": 0, "reused": 0, "watched": 0}

_RACY_NS = 2_000_000_000  # a file changed this close to its stamp is compared by content too (as git does)
_ENV = ("HOME", "XDG_CONFIG_HOME")
#: variables that make git read a repository, index or work tree other than the one found (hooks set
#: some): with one set, git is asked every time
_ELSEWHERE = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")
_lock = threading.Lock()


def _elsewhere() -> bool:
    """Whether a variable of :data:`_ELSEWHERE` is set: then git is asked every time. In a record, from
    the environment read when it began (each name looked up in ``os.environ`` is encoded again: ~20
    times a record)."""
    known = getattr(_record, "environment", None)
    if known is not None:  # every name of _ELSEWHERE starts with GIT_, so it is in _environment_now()
        return any(name in _ELSEWHERE for name, _ in known)
    return any(name in os.environ for name in _ELSEWHERE)


def _environment() -> Tuple[Tuple[str, str], ...]:
    """The environment git's answers depend on; read once per record (:func:`one_record`: ~60 keys a
    record of a module with ten dependencies, each a walk over ``os.environ``)."""
    known = getattr(_record, "environment", None)
    return known if known is not None else _environment_now()


def _environment_now() -> Tuple[Tuple[str, str], ...]:
    # the names first: a value is decoded only for the few that matter (os.environ decodes each read)
    return tuple(sorted((name, os.environ[name]) for name in os.environ if name.startswith("GIT_") or name in _ENV))


def _in_record(kind: str, path: str, find: Callable[[str], Any]) -> Any:
    """``find(path)``, asked once per record for each path (:func:`one_record`): the dependencies of a
    record share the folders above them, each of which is looked at for a ``.git``."""
    seen = getattr(_record, "paths", None)
    if seen is None:
        return find(path)
    key = (kind, path)
    if key not in seen:
        seen[key] = find(path)
    return seen[key]


# --- stamps ----------------------------------------------------------------------------------------

def _stat(path: str, opened: bool) -> os.stat_result:
    """``lstat``, as git looks at a tracked file; or ``fstat`` of the file opened, as git reads its own
    files (on NFS an open revalidates the attributes a bare stat may take from a minute-old cache)."""
    if not opened:
        return os.lstat(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _stamp(path: str, now_ns: int, opened: bool = False) -> Any:
    """What a stat says of ``path`` (None when absent), with its content's digest when it changed
    within 2 s of ``now_ns``."""
    try:
        st = _stat(path, opened)
    except OSError:
        return None
    racy = stat.S_ISREG(st.st_mode) and now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, _digest(path) if racy else None)


def _presence(path: str) -> Any:
    """Whether ``path`` is there and which inode it is (a ``.git`` folder's times move with every commit)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, stat.S_IFMT(st.st_mode))


def _digest(path: str) -> Optional[str]:
    found = provenance.content(path)
    return None if found is None else found[0]


class _Stamps:
    """Paths and what a stat said of each, taken before git answered."""

    def __init__(self) -> None:
        self.files: Dict[str, Any] = {}
        self.present: Dict[str, Any] = {}
        self.opened: set = set()  # files stamped through an open, as git reads them
        self.guard: Optional[watch.Guard] = None  # the kernel's watch of the paths (see unchanged)
        self._compared = 0
        self._adding = threading.Lock()  # a path added, and a guard kept, one at a time

    def _add(self, table: Dict[str, Any], path: str, stamp: Any) -> None:
        with self._adding:
            table.setdefault(path, stamp)
            self.guard = None  # made before the path was there: it does not watch it

    def take(self, paths: Iterable[str], now_ns: int, opened: bool = False) -> None:
        for path in paths:
            if path not in self.files:
                if opened:
                    self.opened.add(path)
                self._add(self.files, path, _stamp(path, now_ns, opened))

    def take_presence(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.present:
                self._add(self.present, path, _presence(path))

    def saved(self) -> Dict[str, Any]:
        """As the project's memo file holds them (JSON: each stamp a list)."""
        return {"files": self.files, "present": self.present, "opened": sorted(self.opened)}

    @classmethod
    def from_saved(cls, saved: Dict[str, Any]) -> "_Stamps":
        """From :meth:`saved` (each stamp a tuple again, as a stat's is compared)."""
        stamps = cls()
        stamps.files = {path: None if was is None else tuple(was) for path, was in saved["files"].items()}
        stamps.present = {path: None if was is None else tuple(was) for path, was in saved["present"].items()}
        stamps.opened = set(saved["opened"])
        return stamps

    def unchanged(self) -> bool:
        """Whether every path is as stamped. From the second comparison in a process on, the kernel
        watches the paths (:mod:`.watch`, as the provenance memo's): only those an event named are
        compared again."""
        guard = self.guard
        watching = provenance.watching()
        if guard is not None and watching:
            held = guard.holds(self._as_stamped)
            if held is not None:
                counts["watched"] += 1
                return held
        self._compared += 1
        self.guard = None
        paths = (set(self.files), set(self.present))
        guard = watch.guard([*paths[0], *paths[1]], [], _no_name) if self._compared > 1 and watching else None
        now = time.time_ns()
        for path, was in list(self.files.items()):
            if not _same(path, was, now, path in self.opened):
                return False
            if was is not None and was[5] is not None and now - max(was[3], was[4]) >= _RACY_NS:
                # its content is as stamped and its times are now 2 s past: a later write moves them
                self.files[path] = (*was[:5], None)
        if not all(_presence(path) == was for path, was in list(self.present.items())):  # (threads add)
            return False
        with self._adding:
            if (set(self.files), set(self.present)) == paths:  # no path added meanwhile
                self.guard = guard
        return True

    def _as_stamped(self, path: str) -> bool:
        if path in self.files:
            return _same(path, self.files[path], time.time_ns(), path in self.opened)
        return _presence(path) == self.present.get(path)


def _same(path: str, was: Any, now_ns: int, opened: bool) -> bool:
    try:
        st = _stat(path, opened)
    except OSError:
        return was is None
    if was is None or was[:5] != (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return False
    return was[5] is None or was[5] == _digest(path)


# --- one repository's state ----------------------------------------------------------------------

class _State:
    """A repository's inputs, stamped, and the answers git gave while they stood (None: not remembered)."""

    def __init__(self, root: str, repo: Any) -> None:
        now = time.time_ns()
        self.root = root
        self.stamps = _Stamps()
        self.answers: Dict[str, Any] = {}  # repr of (what was asked, its arguments) -> git's answer
        self.unsaved = True  # answers the project's memo file does not hold yet
        self.memo_read = False  # whether the project's memo file was read for it
        git_dir, common = repo.git_dir, repo.common_dir
        home = os.path.expanduser("~")
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        head = os.path.join(git_dir, "HEAD")
        config_files = [os.path.join(git_dir, "config.worktree"), os.path.join(common, "config"),
                        os.path.join(home, ".gitconfig"), os.path.join(xdg, "git", "config"), "/etc/gitconfig"]
        self.stamps.take([head, os.path.join(git_dir, "index"), os.path.join(git_dir, "commondir"),
                          os.path.join(common, "packed-refs"), os.path.join(common, "reftable", "tables.list"),
                          os.path.join(common, "info", "exclude"), os.path.join(common, "info", "attributes"),
                          os.path.join(xdg, "git", "ignore"), os.path.join(xdg, "git", "attributes"),
                          *config_files], now, opened=True)
        dot_git = os.path.join(root, ".git")  # a folder (its times move with every commit), or a file
        if os.path.isdir(dot_git):            # naming the repository's folder (a worktree)
            self.stamps.take_presence([dot_git])
        else:
            self.stamps.take([dot_git], now, opened=True)
        self.stamps.take(_refs(git_dir, common), now, opened=True)
        listed = repo.git.config("--list", "--show-origin", "-z", with_exceptions=False)
        origins, named, by_branch = _configuration(listed, root)
        self.stamps.take(origins | named, now, opened=True)
        configuration = [*config_files, *origins, *named, *([head] if by_branch else [])]
        self.configuration = _Stamps()  # what an answer from the configuration alone depends on
        self.configuration.files = {path: self.stamps.files[path] for path in configuration}
        self.configuration.opened = set(configuration)
        entries = [e for e in repo.git.ls_files("-z", "--stage").split("\0") if e]
        self.usable = not any(e.startswith("160000 ") for e in entries)  # a submodule
        tracked = [os.path.join(root, e.partition("\t")[2]) for e in entries]
        self.stamps.take(tracked, now)
        folders = {root}
        for path in tracked:
            folder = os.path.dirname(path)
            while folder not in folders and len(folder) > len(root):
                folders.add(folder)
                folder = os.path.dirname(folder)
        self.stamps.take_presence(folders)  # a folder become a link: git sees its files gone
        self.stamps.take((os.path.join(f, n) for f in folders for n in (".gitattributes", ".gitignore")), now,
                         opened=True)
        counts["states"] += 1

    def saved(self) -> Dict[str, Any]:
        """What the project's memo file holds of it: its stamps and the answers a file can hold."""
        return {"root": self.root, "usable": self.usable, "stamps": self.stamps.saved(),
                "configuration": sorted(self.configuration.files),
                "answers": {key: value for key, value in self.answers.items()
                            if value is None or isinstance(value, (str, bool, int))}}

    @classmethod
    def from_saved(cls, saved: Dict[str, Any]) -> "_State":
        """The state another process of the project saved (its stamps compared before any use)."""
        state = cls.__new__(cls)
        state.root, state.usable, state.answers = saved["root"], bool(saved["usable"]), dict(saved["answers"])
        state.stamps = _Stamps.from_saved(saved["stamps"])
        state.configuration = _Stamps()
        state.configuration.files = {path: state.stamps.files[path] for path in saved["configuration"]}
        state.configuration.opened = set(saved["configuration"])
        state.unsaved, state.memo_read = False, True
        return state

    def adopt(self, other: "_State") -> None:
        """Add the answers of ``other`` (another process's, saved), with the stamps they were given
        under: both states stand now."""
        for mine, theirs in ((self.stamps.files, other.stamps.files), (self.stamps.present, other.stamps.present)):
            for path, was in theirs.items():
                self.stamps._add(mine, path, was)
        self.stamps.opened |= other.stamps.opened
        for key, value in other.answers.items():
            self.answers.setdefault(key, value)

    def watch_path(self, path: str) -> None:
        """Also stamp what decides whether ``path`` is ignored: each folder's ``.gitignore`` down to it."""
        now = time.time_ns()
        self.stamps.take_presence([path])  # gone, or a folder become a file: another answer
        folder = path
        while len(folder) > len(self.root):
            self.stamps.take([os.path.join(folder, ".gitignore")], now, opened=True)
            folder = os.path.dirname(folder)


def _refs(git_dir: str, common: str) -> Iterable[str]:
    """The ref files HEAD leads to (a symbolic ref may name another)."""
    path = os.path.join(git_dir, "HEAD")
    for _ in range(5):
        try:
            with open(path, encoding="utf-8", errors="replace") as text:
                head = text.read().strip()
        except OSError:
            return
        if not head.startswith("ref: "):
            return
        name = head[5:].strip()
        path = os.path.join(common if name.startswith("refs/heads/") else git_dir, name)
        yield path
        yield os.path.join(common, name)


def _configuration(listed: str, root: str) -> Tuple[set, set, bool]:
    """From ``git config --list --show-origin -z``: the files it read; the excludes and attributes
    files they name, and the files they include (one still empty is listed as no origin); whether an
    inclusion depends on the branch checked out."""
    origins, named, by_branch = set(), set(), False
    fields = listed.split("\0")
    for origin, entry in zip(fields[::2], fields[1::2]):
        where = os.path.join(root, origin[5:]) if origin.startswith("file:") else root
        if origin.startswith("file:"):
            origins.add(where)
        key, _, value = entry.partition("\n")
        if key.startswith("includeif.onbranch:"):
            by_branch = True
        if value and (key in ("core.excludesfile", "core.attributesfile", "include.path") or
                      (key.startswith("includeif.") and key.endswith(".path"))):
            base = os.path.dirname(where) if key.endswith(".path") else root  # an include: beside its file
            named.add(os.path.join(base, os.path.expanduser(value)))
    return origins, named, by_branch


_states: Dict[Tuple[str, Any], _State] = {}


def _state(root: Optional[str], repo: Callable[[], Any], whole: bool = True) -> Optional[_State]:
    """The repository at ``root`` as it stands, or None when it is not remembered (memo off, a
    submodule, git failed); ``repo()`` gives its ``git.Repo`` when a new state must be taken. Not
    ``whole``: only its configuration files are compared (an answer read from them alone)."""
    if not provenance.enabled() or not root or _elsewhere():
        return None
    key = (root, _environment())
    with _lock:
        state = _states.get(key)
    checked = getattr(_record, "checked", None)  # in one record, each state is compared once
    if state is not None and checked is not None and state in checked.get(whole, ()):
        return state if state.usable else None
    if state is None or not (state.stamps if whole else state.configuration).unchanged():
        state = _saved_state(key, whole)
        if state is None:
            try:
                state = _State(root, repo())
            except Exception:  # noqa: BLE001 (git could not list its inputs: Sumatra's own call says why)
                with _lock:
                    _states.pop(key, None)
                return None
            state.memo_read = provenance.current_project() is not None
        with _lock:
            _states[key] = state
    elif not state.memo_read and provenance.current_project() is not None:
        saved = _saved_state(key, True)  # taken before the project was known (the project's load)
        if saved is not None:
            state.adopt(saved)
        state.memo_read = True
    if checked is not None:
        for level in ((True, False) if whole else (False,)):
            checked.setdefault(level, []).append(state)
    return state if state.usable else None


#: while this thread makes a record: .checked {whole: [states compared]}, .environment (git's, read
#: when the record began), .paths {(what, path): the answer} (see _in_record), .toolchain (see
#: _toolchain), .outside (see _outside_saved), .found_outside (paths to add to it)
_record = threading.local()


# --- the project's memo files: what one process asked git, for the next ---------------------------

def _toolchain() -> List[Any]:
    """GitPython's package and the git it runs, by path, size and modification time: a memo file
    written with others is not read (another git may answer otherwise). Not by inode or change time:
    the nodes of a cluster that share a project each have their own copy of the same git. Once per
    record."""
    known = getattr(_record, "toolchain", None)
    if known is not None:
        return known
    spec = PathFinder.find_spec("git")
    found: List[Any] = []
    for path in (spec.origin if spec else None, os.environ.get("GIT_PYTHON_GIT_EXECUTABLE") or shutil.which("git")):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        found.append(None if st is None else [path, st.st_size, st.st_mtime_ns])
    if getattr(_record, "checked", None) is not None:
        _record.toolchain = found
    return found


def _memo_name(what: str, *key: Any) -> Tuple[str, str]:
    """The memo file's name for ``key`` (with git's environment and toolchain), and the key as text."""
    text = json.dumps([*key, _environment(), _toolchain()])
    return f"git-{what}-{hashlib.sha256(text.encode()).hexdigest()[:32]}", text


def _saved_state(key: Tuple[str, Any], whole: bool) -> Optional[_State]:
    """The repository's state as another process of the project saved it, if it still stands."""
    name, text = _memo_name("state", key[0])
    saved = provenance.read_memo(name)
    if saved is None or saved.get("key") != text:
        return None
    try:
        state = _State.from_saved(saved)
        return state if (state.stamps if whole else state.configuration).unchanged() else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # a file not as written
        return None


def _save_states(states: Iterable[_State]) -> None:
    """Write the states with answers the project's memo file does not hold yet."""
    for state in states:
        if state.unsaved:
            name, text = _memo_name("state", state.root)
            provenance.write_memo(name, {"key": text, **state.saved()})
            state.unsaved = False


def _outside_saved() -> Optional[Dict[str, Any]]:
    """In a record, the paths in no repository that the project's processes found, with this
    environment and toolchain (the project's memo file, read once per record): path -> [the folder
    it resolved to, the .git paths above it, upstream's message]."""
    if getattr(_record, "checked", None) is None:
        return None
    known = getattr(_record, "outside", None)
    if known is None:
        name, text = _memo_name("outside")
        saved = provenance.read_memo(name) or {}
        known = _record.outside = saved["paths"] if saved.get("key") == text and \
            isinstance(saved.get("paths"), dict) else {}
    return known


def _save_outside(found: Dict[str, Any]) -> None:
    """Add the paths this record found to the project's memo file (another process's kept)."""
    if not found:
        return
    name, text = _memo_name("outside")
    saved = provenance.read_memo(name) or {}
    paths = saved["paths"] if saved.get("key") == text and isinstance(saved.get("paths"), dict) else {}
    provenance.write_memo(name, {"key": text, "paths": {**paths, **found}})


@contextlib.contextmanager
def one_record() -> Iterator[None]:
    """While a record is made (``Project.new_record``): each repository's state is compared once, not
    before each of the ~10 answers Sumatra asks for. Every answer is then one git gave for the
    repository as it was when the record began, or later (a later one is kept with the stamps taken
    before it, so the next record compares again and asks again)."""
    names = ("checked", "environment", "paths", "toolchain", "outside", "found_outside")
    before = [getattr(_record, name, None) for name in names]
    start: Tuple[Any, ...] = ({}, _environment_now(), {}, None, None, {})
    for name, value in zip(names, start):
        setattr(_record, name, value)
    try:
        yield
        if provenance.enabled():  # for the next process of the project (smt run: one record each)
            _save_states({id(state): state for states in _record.checked.values() for state in states}.values())
            _save_outside(_record.found_outside)
    finally:
        for name, value in zip(names, before):
            setattr(_record, name, value)


def _answer(state: Optional[_State], key: Any, ask: Callable[[], Any]) -> Any:
    if state is None:
        return ask()
    text = repr(key)  # as the project's memo file keeps it
    try:
        found = state.answers[text]
    except KeyError:
        pass
    else:
        counts["reused"] += 1
        return found
    found = ask()
    counts["asked"] += 1
    state.answers[text] = found
    state.unsaved = True
    return found


# --- the patches ---------------------------------------------------------------------------------

def remembered(orig: Callable[..., Any]) -> Callable[..., Any]:
    """A ``GitWorkingCopy`` method (``has_changed``, ``diff``, ``current_version``, ``contains``,
    ``get_username``) or ``GitRepository._get_upstream``: upstream asks git, or reads its
    configuration files, each time; here the answer is reused while the repository's state stands."""
    whole = orig.__name__ not in _CONFIGURATION

    @functools.wraps(orig)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if hasattr(self, "repository"):  # a working copy
            state = _state(self.path, lambda: self.repository._repository, whole)
        else:  # a repository: its url is the working copy's folder (or a remote: not remembered)
            state = _state(self.url if isinstance(self.url, str) and os.path.isabs(self.url) else None,
                           lambda: self._repository, whole)
        key = (orig.__name__, args, tuple(sorted(kwargs.items())))
        return _answer(state, key, lambda: orig(self, *args, **kwargs))
    return method


#: the methods whose answer comes from git's configuration files alone: a record loaded from the
#: store makes a repository, which reads its upstream (``smt list -l``: every record)
_CONFIGURATION = ("_get_upstream", "get_username")


def findrepo(orig: Callable[[str], Optional[str]]) -> Callable[[str], Optional[str]]:
    """``sumatra.versioncontrol._git.findrepo``: upstream runs ``git check-ignore`` for every working
    copy made (two per record). Reused while no ``.git`` appeared or went above the path, and the
    repository's state, with the ``.gitignore`` files down to the path, stands."""
    @functools.wraps(orig)
    def find(path: str) -> Optional[str]:
        if not provenance.enabled() or not isinstance(path, str) or not os.path.isabs(path) or \
                _elsewhere():
            return orig(path)
        above, folder = [], os.path.normpath(path)
        while True:
            above.append(os.path.join(folder, ".git"))
            if os.path.lexists(above[-1]) or os.path.dirname(folder) == folder:
                break
            folder = os.path.dirname(folder)
        root = folder if os.path.lexists(above[-1]) else None
        if root is None:
            return orig(path)
        from git import Repo  # GitPython: Sumatra's git support needs it
        state = _state(root, lambda: Repo(root))
        if state is None:
            return orig(path)
        state.watch_path(os.path.normpath(path))
        state.stamps.take_presence(above)
        return _answer(state, ("findrepo", path), lambda: orig(path))
    return find


#: (path, environment) -> (the folder it resolved to, the .git paths above it, upstream's message)
_outside: Dict[Tuple[str, Any], Tuple[str, list, str]] = {}
#: (path, environment) -> (the answer of _outside it was checked for, the kernel's watch since)
_outside_watched: Dict[Tuple[str, Any], Tuple[Tuple[str, list, str], watch.Guard]] = {}
_outside_checks: Dict[Tuple[str, Any], int] = {}  # how often each was checked in this process


def _no_name(name: str, is_folder: bool) -> bool:
    return False  # no folder is watched for the names in it (a .git above is watched by its name)


def get_working_copy(orig: Callable[..., Any]) -> Callable[..., Any]:
    """``sumatra.versioncontrol.get_working_copy``: for a path in no repository (a dependency in
    site-packages), upstream runs GitPython's discovery twice and reads the configuration of the
    working directory's repository, for every such dependency of every record (~1 ms each). Its
    answer, "no working copy", is remembered while no ``.git`` appears in a folder above the path.
    Only when git is the one version control system Sumatra has (another's folder is not watched)."""
    from sumatra.core import get_registered_components
    from sumatra.versioncontrol import VersionControlError, WorkingCopy
    from sumatra.versioncontrol._git import GitWorkingCopy

    @functools.wraps(orig)
    def find(path: Optional[str] = None) -> Any:
        if not provenance.enabled() or not isinstance(path, str) or not os.path.isabs(path) or \
                _elsewhere() or \
                set(get_registered_components(WorkingCopy).values()) != {GitWorkingCopy}:
            return orig(path)
        key = (path, _environment())
        known = _outside.get(key)
        saved = _outside_saved() if known is None else None  # (read once a record, if this process must)
        if saved and path in saved:  # another process of the project found it
            known = (saved[path][0], list(saved[path][1]), saved[path][2])
        guard = None
        if known is not None and provenance.watching():
            kept = _outside_watched.get(key)
            if kept is not None and kept[0] == known and kept[1].holds(lambda changed: False):
                counts["reused"] += 1
                counts["watched"] += 1
                raise VersionControlError(known[2])
            # from the second check in a process on, the kernel watches the path and each .git above
            # it (absent: the name in the folder); no event, and the next check needs no stat
            checks = _outside_checks[key] = _outside_checks.get(key, 0) + 1
            guard = watch.guard([path, *known[1]], [], _no_name) if checks > 1 else None
        # once watched, compared afresh: an answer of this record's (another dependency's) may be
        # older than the watch
        fresh = guard is not None
        real = provenance.realpath(path) if fresh else _in_record("realpath", path, provenance.realpath)
        if known is not None and known[0] == real and os.path.exists(real) and \
                not any(os.path.lexists(above) if fresh else _in_record("lexists", above, os.path.lexists)
                        for above in known[1]):
            counts["reused"] += 1
            if guard is not None:
                _outside_watched[key] = (known, guard)
            raise VersionControlError(known[2])
        _outside_watched.pop(key, None)
        folder, above = real, []
        while True:
            above.append(os.path.join(folder, ".git"))
            if os.path.dirname(folder) == folder:
                break
            folder = os.path.dirname(folder)
        if any(os.path.lexists(git) for git in above):
            return orig(path)  # in a repository: as upstream (its parts remembered above)
        counts["asked"] += 1  # GitPython looks for a repository above it, and reads one's configuration
        try:
            return orig(path)
        except VersionControlError as err:
            if os.path.exists(real):  # (upstream's answer for a path gone is another error)
                _outside[key] = (real, above, str(err))
                if _outside_saved() is not None:  # in a record: for the project's next processes
                    _record.found_outside[path] = [real, above, str(err)]
            raise
    return find
