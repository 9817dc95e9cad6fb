"""``smtlock stress``: a burst of jobs released together (:mod:`.burst`, the job script :mod:`.job`),
hosts made of network namespaces (:mod:`.hosts`), counting what was kept (:mod:`.census`) and the run
itself (:mod:`.stress`). The library never imports it; the CLI does, for ``smtlock stress``."""

__all__: list = []
