"""Operations on a project: the doctor and its repairs (:mod:`.doctor`), ``smtlock postgres``
(:mod:`.migrate`)."""

__all__: list = []
