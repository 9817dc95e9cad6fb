"""What a user's job calls: ``@smt_logged`` (:mod:`.decorator`), its output per call (:mod:`.capture`)
and the ``smt run`` plugin (:mod:`.plugin`, imported by Sumatra as ``smtlock.plugin``)."""

__all__: list = []
