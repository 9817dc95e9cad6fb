"""The lock: :class:`~smtlock.SMTLock` (:mod:`.lock`) and one backend per way to exclude (:mod:`.backends`),
which filesystem a project is on (:mod:`.filesystem`), atomic ``.smt`` files (:mod:`.atomic`), one writing
host per store (:mod:`.hostclaim`) and the files under ``.smt`` (:mod:`.paths`). No Sumatra, no Django."""

__all__: list = []
