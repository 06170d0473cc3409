"""Per-operator latency models: roofline from the hardware catalog, or measured profile tables."""
