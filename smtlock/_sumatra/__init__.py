"""Sumatra made safe: every patch and the path of one record write (:mod:`.patches`), the originals
(:mod:`.upstream`), each store (:mod:`.djangostore`, :mod:`.rows`, :mod:`.uniques`, :mod:`.shelf`), the
provenance memo (:mod:`.provenance`), git's answers remembered (:mod:`.versioncontrol`) and the
kernel's watch of the files they depend on (:mod:`.watch`), moves between stores (:mod:`.moves`,
:mod:`.copying`) and loading a project (:mod:`.project`)."""

__all__: list = []
