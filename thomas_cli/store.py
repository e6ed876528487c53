"""The host's own records under THOMAS_HOME (default ~/.thomas): runs and what was pushed where.

    $THOMAS_HOME/
      runs/<id>/run.json        the record: device, job, status, summary (this module)
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
import shutil
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
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_dir(run_id: str) -> Path:
    if not _RUN_ID.match(run_id or ""):
        raise StoreError(f"'{run_id}' is not a run id (see `thomas runs list`)")
    return runs_dir() / run_id


def load_run(run_id: str) -> dict:
    rec = read_json(run_dir(run_id) / "run.json")
    if rec is None:
        raise StoreError(f"no run '{run_id}' in {runs_dir()} (see `thomas runs list`)")
    return rec


def save_run(rec: dict) -> None:
    write_json(run_dir(rec["id"]) / "run.json", rec)


def list_runs() -> list[dict]:
    d = runs_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        rec = read_json(p / "run.json") if p.is_dir() else None
        if rec is not None:
            out.append(rec)
    return out


def remove_run(run_id: str) -> None:
    shutil.rmtree(run_dir(run_id))


def read_events(run_id: str) -> list[dict]:
    p = run_dir(run_id) / "events.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue          # a line cut off by a crash: the rest is still good
    return out


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
