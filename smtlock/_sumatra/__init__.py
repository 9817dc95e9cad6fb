"""Sumatra made safe: every patch and the path of one record write (:mod:`.patches`), the originals
(:mod:`.upstream`), each store (:mod:`.djangostore`, :mod:`.rows`, :mod:`.uniques`, :mod:`.shelf`), the
provenance memo (:mod:`.provenance`) and git's answers remembered (:mod:`.versioncontrol`), moves
between stores (:mod:`.moves`, :mod:`.copying`) and loading a project (:mod:`.project`)."""

__all__: list = []
