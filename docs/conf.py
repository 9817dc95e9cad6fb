"""Sphinx configuration of smtlock's guide: ``make docs`` (nox -s docs) builds it, warnings as errors."""

import smtlock

project = "smtlock"
author = "the smtlock developers"
copyright = "2026, the smtlock developers"
release = version = smtlock.__version__

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
