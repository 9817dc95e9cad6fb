"""Loading a Sumatra project for smtlock's commands, with errors that say what to do."""

from __future__ import annotations

import json
import os
from typing import Any, Union

from .errors import ProjectFileError
from .lock import project_root

__all__ = ["load"]


def load(path: Union[str, "os.PathLike[str]"] = ".") -> Any:
    """``sumatra.projects.load_project`` for the project at or above ``path``; a missing or corrupt
    project file raises :class:`ProjectFileError` naming it (``smtlock doctor`` can repair it)."""
    from sumatra.projects import load_project
    root = project_root(path)
    file = root / ".smt" / "project"
    try:
        json.loads(file.read_text())
    except OSError as err:
        raise ProjectFileError(f"cannot read {file}: {err.strerror} (run `smt init` or restore it)") from None
    except ValueError as err:
        raise ProjectFileError(f"{file} is not valid JSON ({err}); run `smtlock doctor --repair`") from None
    return load_project(str(root))
