"""The command line's own error type."""

__all__ = ["UsageError"]


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line."""
