"""The PostgreSQL implementation of the store: one queue shared by several ``serve`` replicas.

Modules: ``schema`` (tables, versioned migrations under an advisory lock, error translation),
``queries`` (the SQL, one function per statement group), ``writer`` (group commit of concurrent
enqueues), ``store`` (:class:`PostgresStore`, the async face with the pool and the leases).
Only this package imports asyncpg; its exceptions leave as StorageUnavailableError. May import
what a backend may (:mod:`bridge.store`): config, errors, logs, messages and the store's records.
"""
