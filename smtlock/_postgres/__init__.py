"""PostgreSQL, as smtlock is its client: URIs and connections (:mod:`.client`), libpq's password file
(:mod:`.pgpass`), and the user's own server (:mod:`.server`). Imports only :mod:`smtlock.errors`."""

__all__: list = []
