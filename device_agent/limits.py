"""Limits on untrusted input, checked before anything big is allocated: JSON documents (size, nesting
depth) and .npy/.npz arrays (the header's shape x itemsize against the bytes really there and a memory
budget; object dtypes refused, nothing is ever unpickled). Every failure is one line: the caller's
typed error (PackageError, CheckpointError, DataError, JobError, ...) naming the file and the member.

    doc = read_json(path, JobError, max_bytes=MAX_JOB_BYTES)    # job files, model.json, dataset.json
    doc = parse_json(text, "--set lr", JobError, bare_ok=True)   # a bare word stays a string
    arrays = load_npz(path, PackageError)                        # {name: ndarray}, every header checked first
    check_npy(path, DataError, shape=(n, 8, 8, 3), dtype=np.uint8, budget=None)   # header only (before an mmap)

The host uses the same helpers for the files it reads (`--job`, model.json), so a 200,000-deep JSON file
or an npy header declaring 10^12 elements is the same one line on both sides.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

MAX_JSON_DEPTH = 64                 # job files, model.json, dataset.json nest < 10 deep
MAX_JOB_BYTES = 1 << 20             # a job file (bench/tune/run): a few hundred bytes in practice
MAX_JSON_BYTES = 64 << 20           # model.json of a large model with 1000s of labels: a few MB
MAX_NPZ_MEMBERS = 100_000
MAX_NPY_HEADER = 10_000             # numpy's own default (np.load max_header_size)
PICKLED = "pickled arrays are refused"


# ============================================================================ JSON
def parse_json(text, where: str, err, bare_ok: bool = False):
    """json.loads with a nesting limit (MAX_JSON_DEPTH): err(one line) on bad UTF-8, bad JSON or too deep.
    bare_ok: text that is not JSON at all comes back as the string itself (a --set bare word)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise err(f"{where}: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise err(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        if bare_ok:
            return text
        raise err(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise err(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def json_depth(doc) -> int:
    """Nesting depth of a loaded JSON value (a scalar is 0, [] is 1), without recursion."""
    depth, todo = 0, [(doc, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            depth = max(depth, d)
            if d <= MAX_JSON_DEPTH:               # deeper than the limit is all the caller needs to know
                todo.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return depth


def read_json(path, err, max_bytes: int = MAX_JSON_BYTES, what: str = "file"):
    """A JSON file of at most max_bytes; err(one line) when missing, unreadable, too big, bad or too deep."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise err(f"{path}: {_bytes(size)}, larger than the {_bytes(max_bytes)} a {what} may hold")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise err(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > max_bytes:                     # grew while read (a pipe, a file being written)
        raise err(f"{path}: larger than the {_bytes(max_bytes)} a {what} may hold")
    return parse_json(data, str(path), err)


# ============================================================================ .npy / .npz
def memory_budget() -> int:
    """Bytes one load may allocate: $THOMAS_MEMORY_BUDGET, else MemAvailable (/proc/meminfo, Linux and
    Android), else physical memory, else unlimited."""
    env = os.environ.get("THOMAS_MEMORY_BUDGET", "").strip()
    if env.isdigit():
        return int(env)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def npy_header(fp, where: str, err) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, declared data bytes) from an .npy header at fp (left just after the header).
    err: not an .npy header, an object dtype (PICKLED) or a malformed shape."""
    try:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fp, max_header_size=MAX_NPY_HEADER)
    except (ValueError, EOFError, OSError, TypeError, SyntaxError, zipfile.BadZipFile) as e:
        raise err(f"{where}: not an .npy array ({_first_line(e)})") from None
    if dtype.hasobject:
        raise err(f"{where} holds Python objects: {PICKLED} (numeric arrays only, never unpickled)")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise err(f"{where}: bad shape {shape!r} in the .npy header")
    return tuple(shape), dtype, math.prod(shape) * dtype.itemsize


def _check_size(where: str, err, shape, dtype, declared: int, real: int) -> None:
    if declared != real:
        raise err(f"{where}: the header declares {dtype} {shape} ({_bytes(declared)}) but the file holds "
                  f"{_bytes(real)} of data (truncated or forged)")


def check_npy(path, err, shape: tuple | None = None, dtype=None, budget: int | None = None) -> tuple:
    """Check an .npy file's header without reading its data: not pickled, declared bytes = the bytes
    there, within `budget` (None: no budget, for an mmap), and `shape`/`dtype` when given. Returns the shape."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            got, dt, declared = npy_header(f, str(path), err)
            real = os.fstat(f.fileno()).st_size - f.tell()
    except OSError as e:
        raise err(f"{path}: cannot read ({e.strerror or e})") from None
    if (dtype is not None and dt != np.dtype(dtype)) or (shape is not None and got != tuple(shape)):
        want = f"{np.dtype(dtype) if dtype is not None else 'any dtype'} {shape if shape is not None else ''}"
        raise err(f"{path}: holds {dt} {got}, expected {want.strip()}")
    _check_size(str(path), err, got, dt, declared, real)
    if budget is not None and declared > budget:
        raise err(f"{path}: {dt} {got} needs {_bytes(declared)}, more than the {_bytes(budget)} memory "
                  f"budget of this device")
    return got


def load_npy(path, err, budget: int | None = None) -> np.ndarray:
    """An .npy file read into memory after check_npy (budget None: memory_budget())."""
    check_npy(path, err, budget=memory_budget() if budget is None else budget)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise err(f"{path}: unreadable .npy array ({_first_line(e)})") from None


def load_npz(path, err, budget: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz ({name: array}, names without '.npy'), each member's header checked
    against its real size and all of them against `budget` (None: memory_budget()) before any is read."""
    path = Path(path)
    budget = memory_budget() if budget is None else budget
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise err(f"{path}: not a valid npz archive ({_first_line(e)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise err(f"{path}: {len(infos)} members, more than the {MAX_NPZ_MEMBERS} an npz may hold")
        total, keys = 0, []
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            where = f"{path}: array '{key if key is not None else info.filename}'"
            if key is None or info.is_dir():
                raise err(f"{where} is not an .npy member")
            try:
                with zf.open(info) as fp:
                    shape, dt, declared = npy_header(fp, where, err)
                    real = info.file_size - fp.tell()
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                raise err(f"{where} is unreadable ({_first_line(e)})") from None
            _check_size(where, err, shape, dt, declared, real)
            total += declared
            keys.append((key, info))
        if total > budget:
            raise err(f"{path}: its arrays need {_bytes(total)}, more than the {_bytes(budget)} memory budget "
                      f"of this device")
        out = {}
        for key, info in keys:
            try:
                with zf.open(info) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
                raise err(f"{path}: array '{key}' is unreadable ({_first_line(e)})") from None
    return out


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:160]


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
