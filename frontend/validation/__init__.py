"""Comparison of simulated runs with real serving runs."""
