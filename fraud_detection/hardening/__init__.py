"""The MLflow hardening: each module exists because a measurement or a failure demanded it.

A fork can read the steps without opening this folder, and may leave all of it alone. Each
module's docstring says the failure it guards against, the figure behind it, and what a fork
loses by removing it.

    client_setup.py     a retry budget that fails a dead server in ~30 s, not 8 min; a new
                        SQLite store created once under a file lock; earlier repairs replayed
    outages.py          which part failed (server, its database, its artifact store), and a
                        store outage of up to FRAUD_DETECTION_STORE_RETRY_SECONDS ridden out
    logging_lane.py     a step's logging sent from a background thread (tracking cost 50% -> 12%)
    datasets.py         MLflow datasets with the same schema 3.5 s sooner; logged despite a race
    registry_change.py  register, approve and rollback all or nothing, under a promotion lock
    spool.py            what could not be repaired during an outage, noted locally
    recovery.py         ... and repaired: runs FAILED with their reason, registry changes undone,
                        models that never became READY deleted
"""
