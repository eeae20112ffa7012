"""Benchmarks (import name ``recall_engine.benchmarks``; folder ``bench/``).

Modules with ``add_arguments``/``run`` are subcommands of ``recall-engine bench``
(:mod:`recall_engine.cli.bench` lists them); the others are scripts run as
``python bench/<name>.py``. ``load-1m.sh`` and ``load-1m.toml`` drive the 1M-item
serving benchmark (docs/performance.md).
"""
