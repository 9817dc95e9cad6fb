"""The Sumatra plugin's import path, kept for the projects that name it: ``smtlock enable`` (or ``smt
configure --add-plugin smtlock.plugin``) lists ``smtlock.plugin`` in ``.smt/project``, and Sumatra
imports it in every ``load_project()``. Importing it applies smtlock's patches; the plugin itself is
:mod:`smtlock._tracking.plugin`."""

from ._tracking import plugin as _plugin  # noqa: F401  (importing it is the point)

__all__: list = []
