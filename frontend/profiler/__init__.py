"""Measure per-operator latency tables on a real device with PyTorch (optional extra)."""
