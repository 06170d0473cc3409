"""Retention policies (a finished turn's KV across its program's tool call), one module each; the package
imports them all."""
