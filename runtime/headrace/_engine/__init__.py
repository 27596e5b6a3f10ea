"""The execution engine: plan, fuse, run workers, exchange, epochs.

Layering (lower modules import nothing from higher ones):
``_hash`` -> ``_plan`` -> ``_fuse`` -> ``_worker`` -> ``_cluster``.
"""
