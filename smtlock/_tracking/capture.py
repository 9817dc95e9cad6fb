"""What one call prints, captured for its record and still shown, whatever runs beside it.

While any capture is open, ``sys.stdout`` and ``sys.stderr`` are routers: a write goes to the stream
they replaced and to the buffers of the captures open in the writing thread (or asyncio task), never
to those of another thread's call. Nested captures each receive what the innermost one prints.
"""

from __future__ import annotations

import io
import sys
import threading
from contextvars import ContextVar
from typing import Any, Optional, Tuple

__all__ = ["Captured"]

_buffers: ContextVar[Tuple[io.StringIO, ...]] = ContextVar("smtlock_capture", default=())
_guard = threading.Lock()
_open = 0  # captures open in this process, in any thread


class _Router(io.TextIOBase):
    """Writes to the stream it replaced and to the capture buffers of the writing context."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for buffer in _buffers.get():
            buffer.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def errors(self) -> Optional[str]:  # type: ignore[override]
        return self.stream.errors

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer...: the stream's own
        return getattr(self.stream, name)


class Captured:
    """Captures what Python code of this thread (or task) prints to stdout and stderr, still shown."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self._token: Optional[Any] = None

    def getvalue(self) -> str:
        return self.buffer.getvalue()

    def __enter__(self) -> "Captured":
        global _open
        with _guard:
            if _open == 0:
                sys.stdout, sys.stderr = _routed(sys.stdout), _routed(sys.stderr)
            _open += 1
        self._token = _buffers.set(_buffers.get() + (self.buffer,))
        return self

    def __exit__(self, *exc: Any) -> None:
        global _open
        if self._token is not None:
            _buffers.reset(self._token)
        with _guard:
            _open -= 1
            if _open == 0:  # put back what the routers replaced, unless someone replaced them since
                sys.stdout, sys.stderr = _unrouted(sys.stdout), _unrouted(sys.stderr)


def _routed(stream: Any) -> Any:
    return stream if isinstance(stream, _Router) or stream is None else _Router(stream)


def _unrouted(stream: Any) -> Any:
    return stream.stream if isinstance(stream, _Router) else stream
