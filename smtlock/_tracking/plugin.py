"""The Sumatra plugin: ``smtlock enable`` (or ``smt configure --add-plugin smtlock.plugin``) lists it
in ``.smt/project``, and Sumatra imports it in every ``load_project()``; importing it applies
smtlock's patches, so every ``smt`` command of the project (run, tag, comment, delete, repeat,
configure, sync...) writes safely with no change to anyone's scripts.

What a plugin cannot reach: it is imported after ``.smt/project`` has been read (the atomic writes
of every protected process keep that read whole), ``smt init`` loads no plugin, and it adds no CLI
options.
"""

import os

from .._lock.backends import probe
from .._lock.filesystem import is_shared, mount_of
from .._lock.lock import SMTLock
from .._lock.paths import postgres_uri
from .._postgres.client import mask_uri
from .._sumatra import patches
from .._sumatra.project import describe_store, load
from ..errors import StoreError

__all__ = ["PLUGIN"]

#: the module name Sumatra stores in the project's "plugins" list
PLUGIN = "smtlock.plugin"  # the public module (smtlock/plugin.py), which imports this one

patches.apply()


def enable(path: str = ".") -> str:
    """List the plugin in the project's ``.smt/project``; returns what was done, in one line."""
    return _switch(path, True)


def disable(path: str = ".") -> str:
    """Remove the plugin from the project's ``.smt/project``."""
    return _switch(path, False)


def _switch(path: str, on: bool) -> str:
    project = load(path)
    if (PLUGIN in project.plugins) == on:
        return f"smtlock is {'already' if on else 'not'} enabled in {project.path} (nothing to do)"
    with SMTLock(project, purpose="enable" if on else "disable"):  # a get-modify-save of .smt/project
        if on:
            project.load_plugins(PLUGIN)
        else:
            project.remove_plugins(PLUGIN)
        project.save()
    if on:  # tune the store now (an SQLite store gets its WAL journal), not at the first write
        patches.prepare_store(project.record_store)
    if on:
        return (f"smtlock enabled in {project.path}: every smt command there now writes safely.\n"
                "Every environment that runs smt in this project now needs smtlock installed (elsewhere smt "
                "stops with \"No module named 'smtlock'\"); `smtlock disable` undoes this.")
    return f"smtlock disabled in {project.path}: plain smt commands are unprotected again"


def status(path: str = ".") -> str:
    """What is protected in the project, in a few lines."""
    project = load(path)
    lock = SMTLock(project)
    store = project.record_store
    holder = lock.holder()
    if PLUGIN in project.plugins:
        plugin = "enabled: smt commands write safely"
    else:
        plugin = "not enabled: only code that imports smtlock is protected (run `smtlock enable`)"
    label = (f"{project.label_generator} ({project.timestamp_format}); a label taken already gets "
             "_1, _2...")
    uri = postgres_uri(store)
    return "\n".join([
        f"project    {project.name} at {project.path}",
        f"plugin     {plugin}",
        f"store      {describe_store(store)}{_journal(store)}",
        *([f"server     {_server(uri)}"] if uri else []),
        f"filesystem {_filesystem(project.path)}",
        f"lock file  {lock.lock_file} ({'held by ' + holder if holder else 'free'})",
        f"labels     {label}",
    ])


def _server(uri: str) -> str:
    """A PostgreSQL store's server, masked, and whether it accepts a connection now (one try)."""
    try:
        why = probe(uri)
    except StoreError as err:  # it answers, and refuses the login
        return f"{mask_uri(uri)}: reachable, but {err}"
    if why is None:
        return f"{mask_uri(uri)}: reachable"
    return f"{mask_uri(uri)}: not reachable ({why}); if it is your own server: smtlock server start"


def _filesystem(path: str) -> str:
    """The project's filesystem, and what smtlock does because of it."""
    mount = mount_of(os.path.join(path, ".smt"))
    if not is_shared(os.path.join(path, ".smt")):
        return f"{mount.fstype} at {mount.mountpoint}: local"
    return (f"{mount.fstype} at {mount.mountpoint}: shared with other hosts, so the lock also takes a lease "
            "there; an SQLite or shelve store is written by one host only (use PostgreSQL for jobs on many)")


def _journal(store: object) -> str:
    """The SQLite journal mode of a Django/SQLite store, read without changing it."""
    import sqlite3
    path = getattr(store, "_db_file", None)
    if not path or not os.path.isabs(str(path)) or not os.path.exists(path):
        return ""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return f", journal {db.execute('PRAGMA journal_mode').fetchone()[0]}"
    except sqlite3.Error:
        return ""
