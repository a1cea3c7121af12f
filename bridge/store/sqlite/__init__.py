"""The SQLite backend of :mod:`bridge.store`: one file, one ``serve`` writing it.

``store`` is the async face, ``writer`` the one writer thread with group commit, ``queries`` the
SQL as plain functions over a connection, ``schema`` the schema, migrations and error
translation, ``checkpoint`` the WAL checkpointer thread, ``identity`` checks that the path still
names the open file, ``lock`` keeps it to one ``serve``. Nothing in the bridge outside this
package imports ``sqlite3``. May import what a backend may (:mod:`bridge.store`): config,
errors, logs, messages and the store's records.
"""
