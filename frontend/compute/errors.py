"""Errors of the compute models' inputs (profile bundles, architecture files): user errors, exit 2."""


class ProfileError(ValueError):
    """A profile bundle or architecture file that cannot be used as given; the message says where."""
