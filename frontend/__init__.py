"""AstraServe serving runtime: configuration, workload, instances, engine, metrics, CLI."""

__version__ = "0.1.0"
