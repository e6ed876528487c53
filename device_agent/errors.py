"""The typed error tree. Every error a user can cause is a ThomasError with a one-line message;
the CLIs print it and exit 1, never a traceback."""


class ThomasError(Exception):
    """Base of every user-facing error."""

    exit_code = 1


class PackageError(ThomasError, ValueError):
    """A model package is malformed (message names node and field)."""


class BackendError(ThomasError, ValueError):
    """Bad call into a backend (wrong feed shape, backward before forward, ...)."""


class ModelError(ThomasError, ValueError):
    """A model cannot be built as asked (unknown zoo name, size too small, bad head)."""
