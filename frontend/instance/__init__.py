"""One serving replica: scheduler and KV-cache manager."""
