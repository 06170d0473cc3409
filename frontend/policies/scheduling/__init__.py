"""Scheduling policies (waiting order and preemption), one module each; the package imports them all."""
