"""The machinery of a round: who trains, how batches of clients train, what comes back.

- ``clients``: the named types of a sampled client (:class:`Client`,
  :class:`ClientSpec`), its seed and training settings;
- ``training``: the Prefect tasks that train clients through the worker
  protocol — in turn (one batch), in parallel (worker processes), in a chain
  (level 1);
- ``batch_tasks``: a batch of clients as one task, here or on Dask (codec
  frames across the process boundary);
- ``batches``: a round's clients cut into batches, run at once, and combined
  into the round's aggregate (``fl.aggregation``);
- ``outcome``: :class:`RoundOutcome`, what a round or a batch returns;
- ``tasks``: the level's other tasks — load and partition data, start workers,
  train the baseline, finish the round, evaluate.
"""
