"""What every command that reaches a device shares: the Target of the global options (kept on the root
Click context by the callback in devices.py, never in a module global) and a Session on it."""
from __future__ import annotations

from ..app import current_context, note
from ..device import Session, Target, open_transport
from ..transport.base import Transport


def target() -> Target:
    """The global options of the command being run (the defaults outside a command)."""
    ctx = current_context()
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Target) else Target()


def transport(tgt: Target | None = None) -> Transport:
    """The device the global options name (or `tgt`), its notes on stderr."""
    return open_transport(tgt or target(), note=note)


def session(tgt: Target | None = None) -> Session:
    return Session(transport(tgt), note=note)
