"""The index store: named FAISS indexes with SQLite ids, payloads and a write-ahead record.

Not gRPC: the CLI, the benchmarks and the server all use it through
:class:`pairsmith.service.store.index_store.IndexStore`. It imports only the
root package (errors, atomic files); the servicer depends on it, never the
other way round.
"""
