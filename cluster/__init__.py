"""Ray cluster mode: ``dreamfleet run`` dreams a large dataset on a pool of Ray actors.

Modules: ``manifest`` (inputs, content hashes, shards, reconciliation), ``worker`` (the
per-shard function and the actor), ``pool`` (actors, backpressure, retries, quarantine),
``driver`` (the job: lock, manifest, dispatch, reconciliation, report), ``progress``,
``contact_sheet``, ``commands`` (the CLI) and ``testing`` (fault-injecting backends).
Ray is imported only when a cluster job runs.
"""
