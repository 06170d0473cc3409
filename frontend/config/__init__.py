"""Typed, validated run configuration and the hardware/model catalogs."""

from frontend.config.loader import ConfigError, ResolvedInstance, ResolvedRun, load_and_resolve, load_config

__all__ = ["ConfigError", "ResolvedInstance", "ResolvedRun", "load_and_resolve", "load_config"]
