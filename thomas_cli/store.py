"""The host's own files under THOMAS_HOME (default ~/.thomas): where they are, atomic JSON, names, and the
registry of what was pushed where. Run records are written by runs.py alone.

    $THOMAS_HOME/
      runs/<id>/run.json        the record: device, job, status, summary (runs.py)
      runs/<id>/events.jsonl    every event received, appended as it arrives (the mirror)
      runs/<id>/agent.log       the agent's non-event output (its stderr)
      runs/<id>/{job.json, metrics.jsonl, confusion.json, final/, ckpt/}   pulled from the device
      registry.json             device -> pushed models and datasets (name -> hash, bytes, ...)
      device/                   the root of the embedded local device (--device local)
"""
from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from device_agent.errors import ThomasError

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(ThomasError):
    code = "store"


def home() -> Path:
    return Path(os.environ.get("THOMAS_HOME") or "~/.thomas").expanduser()


def write_json(path: Path, obj) -> None:
    """Atomically (temp file + rename), so a crash never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is unreadable ({e}); remove it or fix it") from None


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise StoreError(f"{what} name '{name}' must be letters, digits, '.', '_' or '-' "
                         f"(at most 64, not starting with '.' or '-')")
    return name


# ============================================================================ runs
def runs_dir() -> Path:
    return home() / "runs"


def new_run_id() -> str:
    """YYYYmmdd-HHMMSS-mmm-xxxx: sorts in creation order (`runs list`, the last run), milliseconds
    included (two runs started in one second sorted by their random suffix before)."""
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f"-{int(t * 1000) % 1000:03d}-" + secrets.token_hex(2)


def run_dir(run_id: str) -> Path:
    if not _RUN_ID.match(run_id or ""):
        raise StoreError(f"'{run_id}' is not a run id (see `thomas runs list`)")
    return runs_dir() / run_id


# ============================================================================ registry
def device_key(describe: dict) -> str:
    """'adb:SERIAL' or 'local:ROOT': one key per device root."""
    return f"{describe['transport']}:{describe['serial']}:{describe['root']}"


def registry() -> dict:
    return read_json(home() / "registry.json", {}) or {}


def remember(describe: dict, kind: str, name: str, meta: dict) -> None:
    reg = registry()
    reg.setdefault(device_key(describe), {}).setdefault(kind, {})[name] = meta
    write_json(home() / "registry.json", reg)


def forget(describe: dict, kind: str, name: str) -> None:
    reg = registry()
    reg.get(device_key(describe), {}).get(kind, {}).pop(name, None)
    write_json(home() / "registry.json", reg)
