"""``pywren bench``: the same workloads on any backend, a JSON file per run, a report across runs.

- :mod:`pywren_core.bench.workloads`: the workloads (latency, scale-out, storage, compute,
  throughput) and :func:`~pywren_core.bench.workloads.run_suite`; a third-party backend gets the
  same comparison by running them, or simply ``pywren bench run --backend NAME``.
- :mod:`pywren_core.bench.results`: the run file, its schema and validator.
- :mod:`pywren_core.bench.report`: Markdown tables and, with ``pywren-core[plot]``, PNG plots.

Nothing is imported here, so ``pywren`` starts as fast with the bench command as without it.
"""
