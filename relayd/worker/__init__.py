"""relay-worker: the userspace data plane (one pinned process per core)."""
