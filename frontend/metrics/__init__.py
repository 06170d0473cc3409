"""Collectors and reports."""
