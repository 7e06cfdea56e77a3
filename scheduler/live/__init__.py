"""The live scheduler: railnet's scheduling core on a real API server.

Kueue's split, one module per step: ``cache`` (watch caches: API objects -> the core's ``Cluster``),
decide (the pure core: ``policies.decide`` through ``gang.plan_gang``; nothing is forked here) and
act (``binder``: assume, annotate + bind, events). ``leader`` keeps two replicas from binding at once,
``loop`` ties them together and is the ``railnet scheduler`` command. Only this subpackage talks to
the API server; everything in ``scheduler/`` outside it stays pure.
"""
