"""``@smt_logged``: one call of a simulation function is one Sumatra record, safe under a burst."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar, Union, overload

from sumatra.core import STATUS_FORMAT
from sumatra.parameters import JSONParameterSet, ParameterSet
from sumatra.programs import PythonExecutable
from sumatra.projects import Project

from .._sumatra.patches import first_write_deferred
from .._sumatra.project import load_reused
from .capture import Captured

__all__ = ["smt_logged", "current_label"]

F = TypeVar("F", bound=Callable[..., Any])
_label: ContextVar[Optional[str]] = ContextVar("smtlock_label", default=None)


def current_label() -> Optional[str]:
    """The record label of the innermost ``@smt_logged`` call running now (None outside one)."""
    return _label.get()


@overload
def smt_logged(func: F) -> F: ...
@overload
def smt_logged(*, project: Union[Project, str, None] = None, tags: Iterable[str] = (),
               reason: Optional[str] = None) -> Callable[[F], F]: ...


def smt_logged(func: Optional[F] = None, *, project: Union[Project, str, None] = None,
               tags: Iterable[str] = (), reason: Optional[str] = None) -> Any:
    """Record each call of ``func`` as a Sumatra record.

    The record holds the call's arguments by name (defaults included; a ParameterSet argument is used
    as it is), its stdout and stderr (still shown), duration, Sumatra's status tag (``_finished_``, or
    ``_failed_`` with the exception in the outcome, re-raised) and the output data found in the
    datastore. ``project`` is a Project or a path (default: the project of the working directory).
    The decorated function pickles, so process pools (multiprocessing, concurrent.futures, joblib)
    and dask can run it; calls may run in threads at once, each capturing only what its thread prints.
    """
    if func is None:
        return functools.partial(smt_logged, project=project, tags=tags, reason=reason)
    options = _Options(project, tuple(tags), reason)

    # The wrapper's code names only module-level functions, which pickle by reference: cloudpickle
    # (joblib/loky, dask) pickles a function defined in __main__ by value, with the globals its code
    # names, and a ContextVar among them cannot be pickled.
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _synchronous_under_a_loop():
            return _record_call(func, options, args, kwargs)

    return wrapper


class _Options:
    """What ``@smt_logged(...)`` was given; a Project is sent to other processes as its path."""

    def __init__(self, project: Union[Project, str, None], tags: tuple, reason: Optional[str]) -> None:
        self.project, self.tags, self.reason = project, tags, reason

    def __reduce__(self) -> tuple:
        project = self.project.path if isinstance(self.project, Project) else self.project
        return _Options, (project, self.tags, self.reason)


def _record_call(func: Callable, options: _Options, args: tuple, kwargs: dict) -> Any:
    """One call of a decorated function, recorded."""
    # our load: outside a project, or with a torn project file, one SMTLockError that says what to do;
    # the Project of this thread's last call again while the project file's settings are the same
    prj = options.project if isinstance(options.project, Project) else load_reused(options.project or ".")
    with first_write_deferred():  # stored once it runs, with a unique label (upstream: also before)
        record = prj.new_record(parameters=_parameters(inspect.signature(func), args, kwargs),
                                main_file=_main_file(func, prj),
                                executable=PythonExecutable(path=sys.executable),
                                reason=options.reason)
    record.launch_mode.working_directory = os.getcwd()
    for tag in options.tags:
        record.add_tag(tag)
    record.add_tag(STATUS_FORMAT % "running")
    record.stdout_stderr = "Not yet captured."
    prj.save_record(record)  # the first write: the label claimed, the record stored running
    token = _label.set(record.label)
    start = time.time()
    status = "failed"
    output = Captured()
    try:
        with output:
            result = func(*args, **kwargs)
        status = "finished"
        return result
    except KeyboardInterrupt:
        status = "killed"
        raise
    except BaseException as err:
        record.outcome = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        _label.reset(token)
        record.duration = time.time() - start
        record.stdout_stderr = output.getvalue()
        record.output_data = record.datastore.find_new_data(record.timestamp)
        record.add_tag(STATUS_FORMAT % status)
        # The run is over: its record waits for the lock, and for a server that is down, as long as
        # it takes, whatever $SMTLOCK_TIMEOUT says (a timeout here would throw away a finished run's
        # result). It takes the lock itself, so it can let go of it while it waits for the server.
        prj.save_record(record)
        prj.save()  # .smt/project, with this record as the most recent: atomic, no lock needed


def _parameters(signature: inspect.Signature, args: tuple, kwargs: dict) -> ParameterSet:
    """The call's arguments by name, defaults applied; a ParameterSet argument is taken as is."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values: dict = {}
    for name, value in bound.arguments.items():
        if isinstance(value, ParameterSet):
            return value
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            values.update(value)
        else:
            values[name] = list(value) if isinstance(value, tuple) else value
    return JSONParameterSet(json.dumps(values, default=repr))


def _main_file(func: Callable, prj: Project) -> Optional[str]:
    """The file that defines ``func``, relative to the working directory when it is below it."""
    try:
        source = inspect.getsourcefile(func)
    except TypeError:
        source = None
    if not source or not os.path.exists(source):
        return prj.default_main_file
    relative = os.path.relpath(source)
    return source if relative.startswith("..") else relative


@contextmanager
def _synchronous_under_a_loop() -> Iterator[None]:
    """Under an event loop in this thread (a Jupyter/IPython kernel runs each cell in one), let the
    call's Django queries run; elsewhere, nothing.

    Django refuses an ORM call (SynchronousOnlyOperation) made while the calling thread runs an
    event loop, so that coroutines sharing that thread's connection cannot interleave inside a
    transaction. A decorated call never yields to the loop (it is synchronous code; the cell waits
    for it), so nothing can interleave: for the call's duration this thread has no running loop
    (asyncio's own per-thread record of it, put back after), which is what Django asks. Not
    $DJANGO_ALLOW_ASYNC_UNSAFE, which would lift the check in every thread of the process; not a
    worker thread, which would take the write path's lock in a thread other than the caller's (a
    call made inside the caller's own ``with SMTLock(...)`` would wait for itself).
    """
    loop = asyncio._get_running_loop()
    if loop is None:
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)
