"""What a record's provenance costs, paid once while its answer cannot have changed.

Sumatra 0.8.1 repeats for every record work whose answer rarely changes: its dependency scan runs
two Python subprocesses (ModuleFinder over the main file, then one importing every dependency for
its version), ``python --version`` runs in a subprocess, and platform information runs ``file -b``,
``uname -p`` and an HTTP probe with a 1 s timeout. Here Sumatra's own functions still compute every
answer; their outputs are remembered, and reused only while what they read is unchanged:

- the scan's two subprocesses (:func:`run_script`), keyed on the interpreter, the script Sumatra
  built (it names the main file or the modules), the working directory and the environment that
  shapes ``sys.path`` or where the dynamic linker looks (``LD_LIBRARY_PATH``: whether an extension
  module imports); an answer of a script that did not run to its end, or during which a file it read
  changed, is not kept; valid while a ``stat`` shows unchanged every module file ModuleFinder found,
  their folders and every ``sys.path`` folder (a new module there could shadow one found, a new
  distribution change a version; a .dist-info folder's name carries its version), the .pth files
  and ``sitecustomize`` there (what a .pth file names joins sys.path), each egg's metadata, and the
  interpreter. Remembered per process and in ``.smt/smtlock-memo/`` (written atomically, never
  trusted unvalidated), so the next ``smt run`` process reuses the first one's scan (a process that
  makes many records compares from its second on only the files the kernel says changed:
  :mod:`.watch`); processes that
  start together with no memo take turns (a lock per scan), so one scans and the others reuse its
  answer. What Sumatra computes from them in-process (version control of each dependency,
  egg-info) still runs for every record.
- an executable's version (:func:`executable_version`): its path, the file it resolves to and its stat.
- platform information with its internet probe (:func:`platform_information`): once per host, while
  its boot, the interpreter and the network (routes, addresses, name resolution) are as they were
  (an answer without an address, the probe having failed: for ten minutes).

``SMTLOCK_MEMO=0`` in the environment turns all of it off.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from modulefinder import Module
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .._lock.atomic import AtomicFile
from .._lock.paths import SMT_DIR
from . import watch

__all__ = ["enabled", "watching", "realpath", "content", "run_script", "executable_version", "platform_information",
           "in_project", "current_project", "read_memo", "write_memo",
           "SourceOnce", "ListingOnce", "MEMO_DIR", "MEMO_SWITCH", "WATCH_SWITCH", "SCAN_WAIT_S", "stats"]

#: the folder under ``.smt`` that holds the memo shared by the project's processes
MEMO_DIR = "smtlock-memo"
#: the environment variable that turns the memo off when set to 0 (or "off", "no", "false")
MEMO_SWITCH = "SMTLOCK_MEMO"
#: the environment variable that turns the kernel's watch of the memo's files off (see :mod:`.watch`)
WATCH_SWITCH = "SMTLOCK_MEMO_WATCH"
#: environment variables that change the interpreter's ``sys.path`` (so what ModuleFinder finds), and
#: where the dynamic linker looks (whether an extension module imports, so its version: ``module load``)
_PATH_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONSAFEPATH",
             "PYTHONPLATLIBDIR", "PATH", "HOME", "LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_LIBRARY_PATH",
             "DYLD_FALLBACK_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES")
#: the names in a folder that an import could find (and folders: packages, namespace packages)
_IMPORTABLE = (".py", ".pyc", ".pyw", ".so", ".pyd", ".pth", ".zip", ".egg", ".egg-info", ".dist-info",
               ".egg-link")
_FORMAT = 6  # of a memo file; another number is not read (6: small files' digests kept, racy or not)
_RACY_NS = 2_000_000_000  # a file changed this close to its stamp is compared by content too (as git does)
#: a file up to this size is stamped with its content's digest too: a change time that moved while
#: size, mtime and link count stand (a hard link made and removed: uv and pip link from their caches,
#: and a build environment's copy of the same file comes and goes) is then settled by content
_DIGEST_MAX = 1 << 20
_TICK_NS = 20_000_000  # how far the kernel's file timestamps may lag the clock (its coarse clock: a tick)

#: what this process did, for tests and ``smtlock`` diagnostics: scans run, scans reused; entries whose
#: paths the kernel began to watch, checks it answered
stats: Dict[str, int] = {"scans": 0, "reused": 0, "memo_read": 0, "memo_written": 0, "listings_reused": 0,
                         "watching": 0, "watched": 0}

_lock = threading.Lock()
_memo: Dict[str, Dict[str, Any]] = {}  # key -> entry (see _new_entry), this process
_local = threading.local()  # .entry: the scan this thread's next versions script follows
_project = threading.local()  # .path: the project whose record this thread is making


def enabled() -> bool:
    """Whether the memo is on (it is unless ``SMTLOCK_MEMO`` is 0, off, no or false)."""
    return _switched_on(MEMO_SWITCH)


def watching() -> bool:
    """Whether the kernel may watch the memo's paths (unless ``SMTLOCK_MEMO_WATCH`` is 0, off, no or false)."""
    return _switched_on(WATCH_SWITCH)


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, "1").strip().lower() not in {"0", "off", "no", "false"}


@contextlib.contextmanager
def in_project(path: Optional[str]) -> Any:
    """While a record of the project at ``path`` is made: its memo lives in ``path/.smt``."""
    before = getattr(_project, "path", None)
    _project.path = path
    try:
        yield
    finally:
        _project.path = before


def current_project() -> Optional[str]:
    """The project whose memo this thread uses now (see :func:`in_project`), or None."""
    return getattr(_project, "path", None) or None


def read_memo(name: str) -> Optional[Dict[str, Any]]:
    """The project's memo file ``name`` (``.smt/smtlock-memo/<name>.json``) of this format, or None:
    outside a record, absent, unreadable, or written by another smtlock."""
    project = getattr(_project, "path", None)
    if not project:
        return None
    try:
        with open(os.path.join(project, SMT_DIR, MEMO_DIR, name + ".json"), encoding="utf-8") as text:
            entry = json.load(text)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != _FORMAT:
        return None
    stats["memo_read"] += 1
    return entry


def write_memo(name: str, entry: Dict[str, Any]) -> None:
    """Write the project's memo file ``name`` whole, atomically (the last writer's stands); a folder the
    user may not write keeps no file (a cache: the next process works it out again)."""
    project = getattr(_project, "path", None)
    if not project:
        return
    path = os.path.join(project, SMT_DIR, MEMO_DIR, name + ".json")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with AtomicFile(path, "w", cache=True, encoding="utf-8") as out:
            json.dump({**entry, "format": _FORMAT}, out)
        stats["memo_written"] += 1
    except (OSError, TypeError, ValueError):
        pass


# --- stamps: what a stat says about a path, compared before each reuse ------------------------------

def realpath(path: str) -> str:
    """``os.path.realpath(path)``, resolved by the kernel where it can (Linux: the path of the file
    opened with ``O_PATH``, as ``/proc/self/fd`` shows it): three system calls however deep the path,
    where ``os.path.realpath`` makes one ``lstat`` per component in Python (~19 against ~6 us, for
    each dependency of every record). Elsewhere, and for a path that does not resolve, as
    ``os.path.realpath``."""
    if not isinstance(path, str) or not _O_PATH:
        return os.path.realpath(path)
    try:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):  # absent, a dangling link, a loop, a NUL: upstream's answer
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc
        return os.path.realpath(path)
    finally:
        os.close(fd)
    return real if real.startswith("/") and not real.endswith(" (deleted)") else os.path.realpath(path)


_O_PATH = getattr(os, "O_PATH", 0)


def _stamp(path: str, now_ns: int) -> Any:
    """What a stat says of a file (None when absent): identity, size, change times, link count, its
    content's digest (a regular file of at most 1 MiB), whether it changed within 2 s of ``now_ns``
    (then a later change may share the timestamp, git's "racily clean" files, and the digest is
    always compared), its mode and flags. A folder: the names in it that could be imported (a
    folder's own mtime changes with every file a run writes there), and its mtime when it is older
    than 2 s (while that stands the names need no listing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    racy = now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    if stat.S_ISDIR(st.st_mode):  # its mtime, when not racy: while it stands, no name came or went
        return [st.st_ino, "dir", _importable(path), None if racy else st.st_mtime_ns]
    digest = None
    if stat.S_ISREG(st.st_mode) and (racy or st.st_size <= _DIGEST_MAX):
        read = content(path)
        if read is not None:  # stamped with the stat taken after the read: a later change moves its times
            digest, st = read
            racy = now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, digest, racy, st.st_mode,
            getattr(st, "st_flags", 0)]


def _importable(folder: str) -> Optional[str]:
    """A digest of the names in ``folder`` an import could find (modules, packages, .pth files,
    distributions' metadata), or None if it cannot be listed."""
    try:  # not __pycache__: Python makes it at a folder's first import, and no import finds a module there
        names = [entry.name for entry in os.scandir(folder)
                 if entry.name.endswith(_IMPORTABLE) or (entry.is_dir() and entry.name != "__pycache__")]
    except OSError:
        return None
    return hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()


def content(path: str) -> Optional[Tuple[str, os.stat_result]]:
    """The sha256 digest of a regular file's content and its stat taken after the read, or None (not
    a regular file: a FIFO is opened without waiting for a writer, and not read). For the memo's
    stamps and version control's."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        with open(fd, "rb", closefd=False) as file:
            for block in iter(lambda: file.read(1 << 20), b""):  # a large file: in pieces
                digest.update(block)
        return digest.hexdigest(), os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _same(path: str, stamp: Any) -> bool:
    """Whether ``path`` is as it was when ``stamp`` was taken."""
    try:
        st = os.stat(path)
    except OSError:
        return stamp is None
    if stamp is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        return stamp[:2] == [st.st_ino, "dir"] and (stamp[3] == st.st_mtime_ns or stamp[2] == _importable(path))
    if _is_folder(stamp):
        return False  # a folder then, a file now (an egg's folder installed again as a zipped egg)
    ino, size, mtime, ctime, links, digest, racy, mode, flags = stamp
    if [ino, size, mtime, mode, flags] != [st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode,
                                          getattr(st, "st_flags", 0)]:
        return False  # (the mode: an interpreter no longer executable; flags: a .pth file hidden on macOS)
    if ctime == st.st_ctime_ns and not racy:
        return True
    # A change time that moved otherwise is a link made or removed (uv and pip install by
    # hard-linking from their caches: every install of the same file elsewhere, and each build
    # environment made and removed, touches this inode) or content written with its mtime set back:
    # the digest settles it. A large file without one stands only if its link count moved; a racy
    # one that could not be read, not at all
    if digest is None:
        return not racy and links != st.st_nlink
    read = content(path)
    return read is not None and read[0] == digest


def _valid(entry: Dict[str, Any]) -> bool:
    """Whether every stamp of ``entry`` still holds. From an entry's second check in a process on, the
    kernel watches its paths (:mod:`.watch`): then only those an event named since are compared."""
    key = entry["key"]
    with _lock:
        kept = _guards.get(key)
        checked = _checked.get(key, 0)
        _checked[key] = checked + 1
    if kept is not None and kept[0] is entry and watching():
        stamps, links = entry["stamps"], entry["links"]
        held = kept[1].holds(lambda path: _same(path, stamps[path]) if path in stamps else
                             realpath(path) == links.get(path))
        if held is not None:
            stats["watched"] += 1
            return held
    made = None
    if checked and watching():
        stamps = entry["stamps"]
        made = watch.guard([p for p, s in stamps.items() if not _is_folder(s)] + list(entry["links"]),
                           [p for p, s in stamps.items() if _is_folder(s)], _maybe_importable)
    valid = all(realpath(link) == target for link, target in entry["links"].items()) and \
        all(_same(path, stamp) for path, stamp in entry["stamps"].items())
    with _lock:
        if valid and made is not None:
            stats["watching"] += 1
            _guards[key] = (entry, made)
        else:
            _guards.pop(key, None)
    return valid


_guards: Dict[str, Tuple[Dict[str, Any], watch.Guard]] = {}  # key -> (its entry, the watch of its paths)
_checked: Dict[str, int] = {}  # key -> how often its entry was checked in this process


def _is_folder(stamp: Any) -> bool:
    return isinstance(stamp, list) and len(stamp) > 1 and stamp[1] == "dir"


def _maybe_importable(name: str, is_folder: bool) -> bool:
    """Whether a name made or removed in a folder on ``sys.path`` may be one an import finds (see
    :func:`_importable`): a folder, a module's suffix, or a name without a dot (a link to a folder);
    a name with another suffix is no module's (a module's name has no dot)."""
    return is_folder or name.endswith(_IMPORTABLE) or "." not in name


# --- the dependency scan ------------------------------------------------------------------------------

_SEEN = '''
try:
    import json as _smtlock_json
    with open({out!r}, "w") as _smtlock_out:
        import site as _smtlock_site, sysconfig as _smtlock_sysconfig
        _smtlock_json.dump({{"path": sys.path, "executable": sys.executable, "prefix": sys.prefix,
                            "usersite": _smtlock_site.ENABLE_USER_SITE and _smtlock_site.getusersitepackages(),
                            "cwd": os.getcwd(), "stdlib": [_smtlock_sysconfig.get_path("stdlib"),
                                                           _smtlock_sysconfig.get_path("platstdlib")],
                            "files": [m.__file__ for m in finder.modules.values() if m.__file__],
                            "looked": sorted({{n.split(".")[0] for n in
                                              list(finder.modules) + list(finder.badmodules)}})}},
                           _smtlock_out)
except Exception:
    pass
'''


def _kind(script: str) -> Optional[str]:
    """Which of Sumatra's two dependency-scan scripts ``script`` is, if either."""
    if "ModuleFinder(" in script and "finder.run_script(" in script:
        return "finder"
    if "find_version_by_attribute" in script and "module_names" in script:
        return "versions"
    return None


def _key(executable_path: str, script: str) -> str:
    env = {name: os.environ.get(name) for name in _PATH_ENV}
    text = json.dumps([_FORMAT, executable_path, _interpreter(executable_path), script, os.getcwd(), env],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_script(path: str) -> bool:
    """Whether the program ``path`` (or the one found on PATH by that name) is a script (``#!``)."""
    located = path if os.path.isabs(path) else shutil.which(path)
    try:
        with open(located or path, "rb") as file:
            return file.read(2) == b"#!"
    except OSError:
        return False


def _interpreter(python: str) -> Optional[str]:
    """What the Python interpreter ``python`` runs: None for a program file; for a script (a shim of
    pyenv, asdf or mise, which runs the interpreter an environment variable or a file in the project
    or the home folder chooses), the interpreter it runs now, as that says (a subprocess, for each
    record made through it). Only for a path Sumatra runs as Python anyway: another script is never
    started with arguments of ours."""
    if not _is_script(python):
        return None
    try:
        done = subprocess.run([python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        return f"? {error}"
    return done.stdout.strip() if done.returncode == 0 else f"? exit {done.returncode}: {done.stderr.strip()}"


def run_script(orig: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """``sumatra.dependency_finder.python.run_script``: upstream starts a Python subprocess for each
    of the two scans of every record. Here each output is remembered and reused while what the scan
    read is unchanged (see the module's docstring); the ModuleFinder script also writes, to a
    temporary file, the module files it found and the ``sys.path`` it searched."""
    @functools.wraps(orig)
    def memoised(executable_path: str, script: str) -> Any:
        kind = _kind(script) if enabled() else None
        if kind == "finder":
            return _finder(orig, executable_path, script)
        entry = getattr(_local, "entry", None)
        _local.entry = None
        if kind == "versions" and entry is not None:
            return _versions(orig, entry, executable_path, script)
        return orig(executable_path, script)
    return memoised


def _finder(orig: Callable[[str, str], Any], executable_path: str, script: str) -> Any:
    key = _key(executable_path, script)
    entry = _lookup(key)
    if entry is None:
        with _one_scanner(key):  # a burst of cold jobs: one scans, the others wait and reuse its memo
            entry = _lookup(key)
            if entry is None:
                return _scan(orig, key, executable_path, script)
    stats["reused"] += 1
    _local.entry = entry
    return {name: Module(name, file, path) for name, file, path in entry["modules"]}


def _scan(orig: Callable[[str, str], Any], key: str, executable_path: str, script: str) -> Any:
    """Sumatra's ModuleFinder scan, run, and its memo entry kept."""
    _local.entry = None
    fd, seen_file = tempfile.mkstemp(prefix="smtlock-scan-", suffix=".json")
    os.close(fd)
    started = time.time_ns()
    try:
        packages = orig(executable_path, script + _SEEN.format(out=seen_file))
        stats["scans"] += 1
        with open(seen_file) as text:
            seen = json.loads(text.read() or "null")
    except (OSError, ValueError):
        seen = None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(seen_file)
    if not seen or not isinstance(packages, dict) or not all(isinstance(m, Module) for m in packages.values()):
        return packages  # the scan did not run to its end (as upstream says, with a warning): nothing kept
    entry = _new_entry(key, executable_path, seen, packages)
    if _changed_since(entry["stamps"], started):
        return packages  # a file it read was saved while it ran: its answer may be the old content's
    _store(entry)
    _local.entry = entry
    return packages


def _changed_since(stamps: Dict[str, Any], started_ns: int) -> bool:
    """Whether a file among ``stamps`` changed after ``started_ns`` (the stamps, taken after the scan,
    hold what it is now). The kernel stamps files from a clock that lags by up to a tick (a few ms),
    hence the margin; a timestamp of whole seconds may be a filesystem's that keeps no finer ones: it
    counts as changed up to 2 s before. Folders aside: a run's files come and go in them (a log in
    the project's), and a folder's stamp is the importable names in it."""
    for stamp in stamps.values():
        if stamp is None or stamp[1] == "dir":
            continue
        mtime, ctime = stamp[2], stamp[3]
        coarse = mtime % 1_000_000_000 == 0 and ctime % 1_000_000_000 == 0
        if max(mtime, ctime) >= started_ns - (_RACY_NS if coarse else _TICK_NS):
            return True
    return False


def _new_entry(key: str, executable_path: str, seen: Dict[str, Any], packages: Dict[str, Module]) -> Dict[str, Any]:
    """What the scan found and the stamps of everything that would change it."""
    now = time.time_ns()
    cwd = seen["cwd"]
    folders = {os.path.normpath(os.path.join(cwd, p)) for p in seen["path"]}
    searched = set(folders)
    files = {os.path.normpath(os.path.join(cwd, f)) for f in seen["files"]}
    standard = _standard_library(files, folders, seen.get("stdlib") or [])
    folders |= {os.path.dirname(f) for f in files}
    files -= standard
    for module in packages.values():
        folders |= {os.path.dirname(p) for p in vars(module).get("__path__") or []}
    metadata = set()
    for folder in list(folders):
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                if folder in searched and (name.endswith(".pth") or name in _SITE_HOOKS):
                    metadata.add(os.path.join(folder, name))  # what they say shapes sys.path, not their names
                for suffix, inner in _METADATA.items():
                    if name.endswith(suffix):
                        # not an .egg-info folder itself: the file in it holds the version, and the
                        # folder's name is among the importable names of the folder above
                        if suffix == ".egg" or not os.path.isdir(os.path.join(folder, name)):
                            metadata.add(os.path.join(folder, name))
                        metadata.update(os.path.join(folder, name, *part.split("/")) for part in inner)
    prefix_cfg = os.path.join(seen["prefix"], "pyvenv.cfg")
    watched = files | folders | metadata | {seen["executable"], prefix_cfg}
    if isinstance(seen.get("usersite"), str):  # on sys.path once it exists (pip install --user makes it)
        watched.add(os.path.normpath(seen["usersite"]))
    for name in seen.get("looked") or ():  # a folder of that name on sys.path (data beside the script)
        for folder in searched:  # shadows the module found elsewhere once it is a package
            inside = os.path.join(folder, name)
            if os.path.isdir(inside) and not os.path.exists(os.path.join(inside, "__init__.py")):
                watched.add(os.path.join(inside, "__init__.py"))
    resolved = os.path.realpath(executable_path) if os.path.isabs(executable_path) else None
    if resolved:
        watched.add(resolved)
    return {
        "format": _FORMAT, "key": key,
        "modules": [[name, vars(m).get("__file__"), vars(m).get("__path__")] for name, m in packages.items()],
        "links": {executable_path: resolved} if resolved else {},
        "stamps": {path: _stamp(path, now) for path in sorted(watched)},
        "versions": {},
    }


#: a distribution's metadata, by the suffix of its folder: the files in it that importlib.metadata
#: (a version a package computes when imported) and Sumatra's egg heuristic read. Not a .dist-info's
#: METADATA: the folder's name carries the version (``<name>-<version>.dist-info``, as installers must
#: write it), and it is among the importable names of the folder above, which is stamped: another
#: version renames the folder, a reinstall of the same one keeps the version (a stat fewer for each
#: distribution on sys.path, ~100 of each record in the benchmark's environment)
_METADATA = {".egg-info": ("PKG-INFO",), ".egg": ("EGG-INFO", "EGG-INFO/PKG-INFO")}
#: files in a site folder that ``site`` runs at an interpreter's start (a .pth file is read too: the
#: folders it names join sys.path, and an editable install's keeps its name when it names another)
_SITE_HOOKS = ("sitecustomize.py", "usercustomize.py")


def _standard_library(files: Set[str], path: Set[str], stdlib: List[str]) -> Set[str]:
    """The module files among ``files`` that belong to the interpreter's standard library (those
    whose nearest ``sys.path`` folder is its ``stdlib`` or lies within it, site-packages aside). They
    change only when the interpreter is installed again, and that changes the interpreter's own
    file, which every entry stamps; their folders stay stamped (a module put there could shadow one)."""
    roots = [os.path.normpath(p) for p in stdlib if p]
    if not roots:
        return set()
    path_folders = sorted(path, key=len, reverse=True)  # the sys.path folders, the nearest first

    def standard(folder: str) -> bool:
        return os.path.basename(folder) not in ("site-packages", "dist-packages") and any(
            folder == root or folder.startswith(root + os.sep) for root in roots)
    found = set()
    for file in files:
        owner = next((f for f in path_folders if file.startswith(f + os.sep)), None)
        if owner is not None and standard(owner):
            found.add(file)
    return found


def _versions(orig: Callable[[str, str], Any], entry: Dict[str, Any], executable_path: str,
              script: str) -> Any:
    """The versions found by importing each dependency: valid while the scan they follow is."""
    key = _key(executable_path, script)
    if key in entry["versions"]:
        return ast.literal_eval(entry["versions"][key])
    with _one_scanner(entry["key"]):
        kept = _read(entry["key"])  # another process of the burst may have found them meanwhile
        if kept is not None and kept["stamps"] == entry["stamps"] and key in kept["versions"]:
            entry["versions"][key] = kept["versions"][key]
            return ast.literal_eval(kept["versions"][key])
        return _found_versions(orig, entry, key, executable_path, script)


def _found_versions(orig: Callable[[str, str], Any], entry: Dict[str, Any], key: str, executable_path: str,
                    script: str) -> Any:
    versions = orig(executable_path, script)
    if not isinstance(versions, list) or len(versions) != _names_asked(script):
        # the script did not run to its end (an import raised what it does not catch: a shared library
        # not found, OSError); the record fails as upstream's does, and the next one asks again
        return versions
    try:
        text = repr(versions)
        if ast.literal_eval(text) != versions:
            return versions
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return versions  # not a plain literal: asked again next time
    entry["versions"][key] = text
    _store(entry)
    return versions


def _names_asked(script: str) -> Optional[int]:
    """How many modules Sumatra's versions script asks for (its ``module_names = [...]`` line)."""
    for line in script.splitlines():
        if line.startswith("module_names = "):
            with contextlib.suppress(ValueError, SyntaxError):
                return len(ast.literal_eval(line[len("module_names = "):]))
    return None


class SourceOnce:
    """Stands in for the ``inspect`` module inside ``sumatra.dependency_finder.python``: every record's
    versions script embeds ``inspect.getsource(find_version_by_attribute)``, which tokenizes Sumatra's
    module again each time (~0.7 ms of an ``@smt_logged`` call). A function's source is remembered
    while its file's size and mtime are those ``linecache`` would check."""

    def __init__(self) -> None:
        import inspect
        self._module = inspect
        self._sources: Dict[Any, Tuple[Any, str]] = {}  # code object -> (its file's stamp, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def getsource(self, obj: Any) -> str:
        code = getattr(obj, "__code__", None)
        if code is None:
            return self._module.getsource(obj)
        try:
            st = os.stat(code.co_filename)
            stamp: Any = (st.st_size, st.st_mtime_ns)
        except OSError:
            return self._module.getsource(obj)
        kept = self._sources.get(code)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        source = self._module.getsource(obj)
        self._sources[code] = (stamp, source)
        return source


class ListingOnce:
    """Stands in for the ``os`` module inside ``sumatra.dependency_finder.python``: its egg heuristic
    lists the folder of every dependency whose version is still unknown, for every record (site-packages,
    hundreds of names, ~4 listings an ``@smt_logged`` call). A folder's listing is remembered while its
    stat shows the same folder with the same mtime and ctime, which every name made, removed or renamed
    in it moves (and ctime any ``touch`` that sets the mtime back); not while they are within 2 s of the
    listing, where a later change may share them. Its ``os.path``: see :class:`_KernelRealpath`."""

    def __init__(self) -> None:
        self._listings: Dict[str, Tuple[Any, List[str]]] = {}  # folder -> (its stat when listed, names)
        self._guard = threading.Lock()
        self.path = _KernelRealpath()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def listdir(self, path: Any = ".") -> List[str]:
        if not isinstance(path, str) or not enabled():
            return os.listdir(path)
        try:
            st = os.stat(path)
        except OSError:
            return os.listdir(path)  # upstream's error
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        with self._guard:
            kept = self._listings.get(path)
        if kept is not None and kept[0] == stamp:
            stats["listings_reused"] += 1
            return list(kept[1])
        now = time.time_ns()
        names = os.listdir(path)
        if now - max(st.st_mtime_ns, st.st_ctime_ns) >= _RACY_NS:
            with self._guard:
                self._listings[path] = (stamp, names)
        return list(names)


class _KernelRealpath:
    """Stands in for ``os.path`` inside ``sumatra.dependency_finder.python``: ``Dependency.from_module``
    resolves the folder of every package dependency of every record with ``os.path.realpath`` (and
    uses the path unresolved): here :func:`realpath`, which gives the same answer."""

    realpath = staticmethod(realpath)

    def __getattr__(self, name: str) -> Any:
        return getattr(os.path, name)


#: how long a process waits for another's scan before it scans too (that one may be stopped)
SCAN_WAIT_S = 120.0


@contextlib.contextmanager
def _one_scanner(key: str) -> Iterator[None]:
    """While inside, no other process of the project runs the scan for ``key``: a burst of jobs that
    all find no memo would each run the same scan (seconds of CPU each); one runs it and the others
    then find its memo. Only a cache's lock (``.smt/smtlock-memo/scan-<key>.lock``): where flock
    fails, or after :data:`SCAN_WAIT_S`, a process scans without it."""
    path = _memo_file(key)
    fd = None
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path[:-len(".json")] + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
    try:
        deadline = time.monotonic() + SCAN_WAIT_S
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another process scans: its memo comes when it ends
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            except OSError:  # no flock on this filesystem
                break
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it


def _lookup(key: str) -> Optional[Dict[str, Any]]:
    """The valid entry for ``key``: this process's, else the project's memo file's."""
    with _lock:
        entry = _memo.get(key)
    if entry is not None and _valid(entry):
        return entry
    entry = _read(key)
    if entry is not None and _valid(entry):
        with _lock:
            _memo[key] = entry
        return entry
    with _lock:
        _memo.pop(key, None)
    return None


def _memo_file(key: str) -> Optional[str]:
    project = getattr(_project, "path", None)
    if not project:
        return None
    return os.path.join(project, SMT_DIR, MEMO_DIR, f"scan-{key[:32]}.json")


def _read(key: str) -> Optional[Dict[str, Any]]:
    entry = read_memo(f"scan-{key[:32]}")
    return entry if entry is not None and entry.get("key") == key else None


def _store(entry: Dict[str, Any]) -> None:
    """Keep ``entry`` in this process and in the project's memo file (see :func:`write_memo`)."""
    with _lock:
        _memo[entry["key"]] = entry
    write_memo(f"scan-{entry['key'][:32]}", entry)


# --- the executable and the platform --------------------------------------------------------------

_versions_seen: Dict[Tuple[str, str], Tuple[Tuple[Optional[str], Optional[str]], Any, Any, Any]] = {}


def executable_version(orig: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``Executable._get_version``: upstream runs ``<path> --version`` in a subprocess for every
    Executable made (``@smt_logged`` makes one per call). Reused while the path resolves to the same
    file with the same stat (for a Python shim: while it runs the same interpreter, unchanged); a
    script that is no Python shim is asked every time."""
    @functools.wraps(orig)
    def version(self: Any) -> Any:
        path = self.path
        if not enabled() or not isinstance(path, str) or not os.path.isabs(path):
            return orig(self)
        python = type(self).__name__ == "PythonExecutable"
        if not python and _is_script(path):
            return orig(self)  # a script whose answer may hang on anything (a Python shim says what it runs)
        runs = _interpreter(path) if python else None
        key = (type(self).__qualname__, path)
        resolved = realpath(path)
        known = _versions_seen.get(key)
        if known is not None and known[0] == (resolved, runs) and _same(resolved, known[1]) and \
                (runs is None or _same(runs, known[3])):
            return known[2]
        now = time.time_ns()
        stamp, runs_stamp = _stamp(resolved, now), _stamp(runs, now) if runs else None
        found = orig(self)
        _versions_seen[key] = ((resolved, runs), stamp, found, runs_stamp)
        return found
    return version


_platform: Dict[str, Any] = {}  # "serial" -> (the network's digest, the platform information, when asked)
#: what a host's platform information depends on besides its name, its boot (kernel release and version)
#: and the interpreter (``file -b`` reads its architecture): the network the probe and the address
#: lookup go through (routes and addresses; name resolution)
_NETWORK = ("/proc/net/route", "/proc/net/if_inet6", "/proc/net/fib_trie", "/etc/hosts", "/etc/resolv.conf",
            "/etc/nsswitch.conf", "/etc/hostname")


def platform_information(orig: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``LaunchMode.get_platform_information`` of a serial launch: upstream runs ``file -b`` and
    ``uname -p`` and probes an outside address over HTTP (1 s timeout, paid in full on a node whose
    firewall drops it) for every record. The answer is taken once per host and kept in the project's
    memo for the next processes (a job array pays the probe once per node): valid for the same host
    name, boot and interpreter (the key) while the network is as it was (:func:`_network`), so the
    answer is the one plain Sumatra would get there."""
    @functools.wraps(orig)
    def information(self: Any) -> Any:
        if not enabled() or type(self).get_platform_information is not information:
            return orig(self)  # a launch mode with its own way (MPI: the remote nodes)
        network = _network()
        with _lock:
            known = _platform.get("serial")
        if known is None or known[0] != network or _stale(known[1], known[2]):
            kept = _read_platform(network)
            if kept is None:
                kept = (orig(self), time.time())
                _store_platform(network, *kept)
            known = (network, *kept)
            with _lock:
                _platform["serial"] = known
        return copy.deepcopy(known[1])
    return information


#: how long an answer without an address is reused (Sumatra's 127.0.0.1: its probe of an outside address
#: failed, or the host's name did not resolve): on an offline node, the probe's 1 s timeout once in this
#: long; where the failure was a passing one, the address is in the records again after at most this long
_UNSURE_S = 600.0


def _stale(found: Any, asked: float) -> bool:
    """Whether platform information ``found`` (asked at ``asked``, the epoch's seconds) is to be asked again."""
    unsure = any(getattr(information, "ip_addr", None) == "127.0.0.1" for information in found)
    return unsure and not 0 <= time.time() - asked < _UNSURE_S


def _network() -> str:
    """A digest of what the platform probe's answer depends on that can change without a reboot:
    the network's files, and the proxies urllib sends the probe through (``*_proxy``)."""
    digest = hashlib.sha256()
    proxies = sorted((name, value) for name, value in os.environ.items() if name.lower().endswith("_proxy"))
    digest.update(json.dumps(proxies).encode() + b"\0")
    for path in _NETWORK:
        try:
            with open(path, "rb") as file:
                digest.update(path.encode() + b"\0" + file.read() + b"\0")
        except OSError:
            digest.update(path.encode() + b"\0-\0")
    return digest.hexdigest()


def _host_key() -> str:
    """This host, this boot and this interpreter (its path and stat)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
    except OSError:  # not Linux: the kernel's release and version stand for the boot
        boot = " ".join(os.uname()[2:4])
    interpreter = os.path.realpath(sys.executable)
    try:  # a plain stat: another build installed there is another file (a digest would read it whole)
        st = os.stat(interpreter)
        built = [st.st_ino, st.st_size, st.st_mtime_ns]
    except OSError:
        built = None
    text = json.dumps([_FORMAT, socket.gethostname(), boot, interpreter, built])
    return hashlib.sha256(text.encode()).hexdigest()


def _platform_file() -> Optional[Tuple[str, str]]:
    project = getattr(_project, "path", None)
    if not project:
        return None
    key = _host_key()
    return os.path.join(project, SMT_DIR, MEMO_DIR, f"platform-{key[:32]}.json"), key


def _read_platform(network: str) -> Optional[Tuple[List[Any], float]]:
    """The platform information another process of this host kept, and when it was asked, if still valid."""
    where = _platform_file()
    if where is None:
        return None
    try:
        with open(where[0]) as text:
            entry = json.load(text)
        if entry.get("format") != _FORMAT or entry.get("key") != where[1] or entry.get("network") != network:
            return None
        from sumatra.launch import PlatformInformation
        found = [PlatformInformation(**fields) for fields in entry["platforms"]]
        asked = float(entry["asked"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if _stale(found, asked):
        return None
    stats["memo_read"] += 1
    return found, asked


def _store_platform(network: str, found: Any, asked: float) -> None:
    where = _platform_file()
    if where is None:
        return
    try:
        entry = {"format": _FORMAT, "key": where[1], "network": network, "asked": asked,
                 "platforms": [dict(vars(information)) for information in found]}
        os.makedirs(os.path.dirname(where[0]), exist_ok=True)
        with AtomicFile(where[0], "w", cache=True, encoding="utf-8") as out:
            json.dump(entry, out)
        stats["memo_written"] += 1
    except (OSError, TypeError, ValueError):
        pass  # a cache: the next process asks again
