"""Shared pieces of ONNX import/export: reading files, input shapes, labels, small helpers.

    m = load_model("model.onnx")          # external data read (confined to the model's folder)
    shape = parse_shape("1,3,224,224")    # --input-shape
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from device_agent.errors import OnnxError
from device_agent.limits import parse_json

DEFAULT_OPSET = 17
EXPORT_OPSETS = range(7, 22)          # opsets export_onnx writes
DEFAULT_TOLERANCE = 1e-4              # parity: max|ours - onnxruntime| / max|onnxruntime|
DEFAULT_DOMAINS = ("", "ai.onnx")
META_PREFIX = "thomas."               # metadata_props keys written by export, read by import


def f32(v) -> float:
    """The shortest decimal that is the same float32 (ONNX float attributes are float32):
    9.99999974737875e-06 -> 1e-05."""
    return float(str(np.float32(v)))


def onnx_attrs(n: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (strings decoded); Malformed if one cannot be read."""
    out = {}
    for a in n.attribute:
        try:
            v = helper.get_attribute_value(a)
        except (ValueError, TypeError) as e:
            raise Malformed(f"attribute '{a.name}' cannot be read ({first_line(e)})") from None
        if v is None:
            raise Malformed(f"attribute '{a.name}' cannot be read (type {a.type}: no value)")
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def attr_int(a: dict, key: str, default=None) -> int:
    """An INT attribute (bools and integral floats accepted); Malformed otherwise."""
    v = a.get(key, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise Malformed(f"attribute '{key}' must be an integer, got {_show(v)}")
    return int(v)


def attr_float(a: dict, key: str, default=None) -> float:
    v = a.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise Malformed(f"attribute '{key}' must be a finite number, got {_show(v)}")
    return float(v)


def attr_ints(a: dict, key: str, default=None, length: int | None = None) -> list[int]:
    """An INTS attribute of `length` entries (None: any); Malformed otherwise."""
    v = a.get(key, default)
    if not isinstance(v, (list, tuple)) or not all(isinstance(d, int) for d in v) \
            or (length is not None and len(v) != length):
        want = f"{length} integers" if length is not None else "integers"
        raise Malformed(f"attribute '{key}' must be a list of {want}, got {_show(v)}")
    return [int(d) for d in v]


def attr_str(a: dict, key: str, default=None) -> str:
    v = a.get(key, default)
    if not isinstance(v, str):
        raise Malformed(f"attribute '{key}' must be a string, got {_show(v)}")
    return v


def _show(v) -> str:
    return "nothing (missing)" if v is None else repr(v)[:60]


def first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def fmt_shape(shape) -> str:
    return "x".join("N" if d is None else str(d) for d in shape)


def parse_shape(text: str) -> tuple:
    """'1,3,224,224' -> (1, 3, 224, 224); a batch of -1, N or ? -> None. OnnxError on junk."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    dims = []
    for i, p in enumerate(parts):
        if i == 0 and p in ("-1", "N", "n", "?"):
            dims.append(None)
            continue
        try:
            d = int(p)
        except ValueError:
            d = 0
        if d <= 0:
            raise OnnxError(f"--input-shape {text!r}: dimensions must be positive integers "
                            f"(the batch may be -1), e.g. 1,3,224,224")
        dims.append(d)
    if not dims:
        raise OnnxError(f"--input-shape {text!r}: give the dimensions, e.g. 1,3,224,224")
    return tuple(dims)


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped), or a JSON list of strings."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OnnxError(f"{p}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxError(f"{p}: cannot read labels ({first_line(e)})") from None
    if text.lstrip().startswith("["):
        labels = parse_json(text, f"{p} (labels)", OnnxError)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise OnnxError(f"{p}: a JSON labels file must hold a list of strings")
        return labels
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise OnnxError(f"{p}: the labels file is empty")
    return labels


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data (which must lie inside the model's folder)."""
    p = Path(path)
    if not p.exists():
        raise OnnxError(f"{p}: no such file")
    if not p.is_file():
        raise OnnxError(f"{p}: not a file")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError, TypeError, UnicodeDecodeError) as e:
        raise OnnxError(f"{p}: not a readable ONNX model (truncated or not ONNX: {first_line(e)})") from None
    if not m.HasField("graph") or (not m.graph.node and not m.graph.output):
        raise OnnxError(f"{p}: not an ONNX model (no graph inside; truncated or a different file type)")
    if opset_of(m) is None:
        raise OnnxError(f"{p}: the model declares no opset of the default ONNX domain")
    base = p.resolve().parent
    for t in all_tensors(m.graph):
        if t.data_location == TensorProto.EXTERNAL:
            read_external(t, base, p)
    return m


def opset_of(m: onnx.ModelProto) -> int | None:
    for o in m.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return None


def all_tensors(g: onnx.GraphProto):
    yield from g.initializer
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors


def read_external(t: TensorProto, base: Path, model_path: Path) -> None:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    where = f"{model_path}: tensor '{t.name}'"
    if not loc:
        raise OnnxError(f"{where}: external data without a location")
    target = (base / loc).resolve()
    if Path(loc).is_absolute() or not target.is_relative_to(base):
        raise OnnxError(f"{where}: external data path '{loc}' escapes the model's folder {base}; "
                        f"refusing to read it")
    if not target.is_file():
        raise OnnxError(f"{where}: external data file '{loc}' is missing (looked in {base})")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise OnnxError(f"{where}: external data offset/length are not integers") from None
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read() if length is None else f.read(length)
    if length is not None and len(data) != length:
        raise OnnxError(f"{where}: external data file '{loc}' is truncated "
                        f"(wanted {length} bytes at offset {offset}, got {len(data)})")
    t.raw_data = data
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT


def to_array(t: TensorProto, where: str) -> np.ndarray:
    """A tensor's value; OnnxError for non-numeric (string, complex, ...) or unreadable tensors."""
    try:
        arr = numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise OnnxError(f"{where}: tensor '{t.name}' cannot be read ({first_line(e)})") from None
    if arr.dtype.kind not in "biuf":
        kind = TensorProto.DataType.Name(t.data_type) if t.data_type in TensorProto.DataType.values() \
            else str(arr.dtype)
        raise OnnxError(f"{where}: tensor '{t.name}' holds {kind} data; THOMAS reads numeric tensors only")
    return arr


def input_dims(vi: onnx.ValueInfoProto) -> tuple | None:
    """Declared shape: ints for fixed dims, None for symbolic/-1/0/unknown; None if no shape at all."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)


def model_input(m: onnx.ModelProto, path) -> onnx.ValueInfoProto:
    inits = {t.name for t in m.graph.initializer}
    real = [i for i in m.graph.input if i.name not in inits]
    if len(real) != 1:
        names = ", ".join(repr(i.name) for i in real) or "none"
        raise OnnxError(f"{path}: THOMAS packages take exactly one input tensor; this model has "
                        f"{len(real)} ({names})")
    vi = real[0]
    et = vi.type.tensor_type.elem_type
    if vi.type.WhichOneof("value") != "tensor_type" or et not in (0, TensorProto.FLOAT):
        raise OnnxError(f"{path}: input '{vi.name}' must be a float32 tensor "
                        f"(got {TensorProto.DataType.Name(et) if et else 'a non-tensor'})")
    return vi


def resolve_shape(dims: tuple | None, input_shape, name: str, path) -> tuple[tuple, bool]:
    """(concrete shape used to import and check, whether the file leaves the batch free)."""
    dynamic_batch = dims is None or not dims or dims[0] is None
    if input_shape is not None:
        want = tuple(input_shape)
        if dims is not None and len(want) != len(dims):
            raise OnnxError(f"--input-shape {','.join('-1' if d is None else str(d) for d in want)} has rank "
                            f"{len(want)}, but input '{name}' of {path} has rank {len(dims)} "
                            f"(declared {fmt_shape(dims)})")
        if want[0] is None:
            dynamic_batch = True
        batch = want[0] if want[0] is not None else (dims[0] if dims and dims[0] else 2)
        return (batch,) + tuple(want[1:]), dynamic_batch
    if dims is None:
        raise OnnxError(f"{path}: input '{name}' declares no shape; pass --input-shape, e.g. 1,3,224,224")
    if any(d is None for d in dims[1:]):
        raise OnnxError(f"{path}: input '{name}' has free dimensions ({fmt_shape(dims)}); "
                        f"pass --input-shape, e.g. 1,3,224,224")
    # NOTE: a free batch is imported (and checked) at 2, never 1, so that a batch-sized value
    # in a shape sub-graph cannot pass for a literal 1.
    return (dims[0] or 2,) + tuple(dims[1:]), dynamic_batch


def toposort(nodes: list, known: set, path) -> list:
    """ONNX asks for topological order but not every exporter obeys: stable Kahn sort."""
    produced = {o for n in nodes for o in n.output if o}
    out, seen, pending = [], set(known), list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(not t or t in seen or t not in produced for t in n.input):
                out.append(n)
                seen.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise OnnxError(f"{path}: the graph has a cycle through node '{rest[0].name or rest[0].op_type}'")
        pending = rest
    return out


class Unsupported(Exception):
    """A node THOMAS cannot represent; `label` is what the error lists ('Transpose', 'Gemm with transA=1')."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class Malformed(Exception):
    """A node that breaks the ONNX spec (an attribute of the wrong type, a missing required one):
    the importer stops with one line naming the node."""


def check_memory(nbytes: int, what: str, hint: str, budget: int | None = None) -> None:
    """OnnxError (one line) when `what` would need more than `budget` bytes (default: the memory
    available now, device_agent.limits.memory_budget: $THOMAS_MEMORY_BUDGET, else MemAvailable)."""
    if budget is None:
        from device_agent.limits import memory_budget

        budget = memory_budget()
    if nbytes > budget:
        raise OnnxError(f"{what} needs about {_gib(nbytes)} of memory, more than the {_gib(budget)} "
                        f"available; {hint}")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 27 else f"{n / (1 << 20):.3g} MiB"


def auto_pads(mode: str, hw, k, stride, dil) -> list[int] | None:
    """ONNX auto_pad resolved for a known input size -> [top, left, bottom, right]; None = NOTSET."""
    if mode in ("NOTSET", ""):
        return None
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={mode}")
    begin, end = [], []
    for size, kk, s, d in zip(hw, k, stride, dil):
        out = -(-size // s)
        total = max((out - 1) * s + (kk - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        b, e = (small, big) if mode == "SAME_UPPER" else (big, small)
        begin.append(b)
        end.append(e)
    return begin + end


def reshape_attr(in_shape: tuple, out_shape: tuple) -> list[int]:
    """A Reshape target that keeps the batch free: 0 (copy) where the batch dim passes through."""
    out = [int(d) for d in out_shape]
    if out and in_shape and out[0] == in_shape[0]:
        out[0] = 0
    return out


def vector(c: np.ndarray, k: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts against (N,K,...) of `rank` along K only -> (K,); else None."""
    if c.ndim > rank:
        return None
    cc = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(cc.shape) if i != 1) or cc.shape[1] not in (1, k):
        return None
    return np.broadcast_to(cc.reshape(cc.shape[1]), (k,)).astype(np.float32)
