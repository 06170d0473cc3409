"""Prefetch policies (KV loaded back from the tier ahead of need), one module each; the package imports
them all."""
