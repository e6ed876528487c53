"""Ops and kernels line up, checked from the source (nothing is imported or compiled):

- every kernels/X.cl is an op family's (device_agent/ops/X.py) or one of the backend's own files
  (BACKEND_FILES, each named like the backends/opencl module that launches it), and common.cl;
- an op module launches kernels from its own file only (ops/_cl.py: the Plan's plumbing, plan.cl);
- the backend launches only its own files;
- every kernel a launcher names exists in the file it names, and every kernel of a file is launched.

`python tests/test_layout_kernels.py` prints op module -> kernel file -> kernels.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
OPS = ROOT / "device_agent" / "ops"
BACKEND = ROOT / "device_agent" / "backends" / "opencl"
OP_INFRA = {"__init__", "base", "registry", "_cl"}        # op modules that are no op family
BACKEND_FILES = {"gemm.cl": "gemm.py", "mixed.cl": "mixed.py", "optim.cl": "optim.py", "plan.cl": "plan.py"}
SHARED = {"common.cl"}                                     # prepended to every file by the loader
KERNEL = r"__kernel\b[^;{]*?\bvoid\s+(\w+(?:##\w+)?)\s*\("   # attributes may sit between
PLUMBING = {"_cl": {"plan.cl"}, "record": {"plan.cl"}}     # the Plan's launch recording is plan.py's


def kernels_in(src: str) -> set[str]:
    """Kernel names a .cl file defines: `__kernel void name`, and those its macros stamp out
    (`#define M(NAME, ...)` with `__kernel void NAME` or `NAME##_suffix` in the body, then `M(x, ...)`)."""
    src = re.sub(r"//.*", "", re.sub(r"/\*.*?\*/", "", src, flags=re.S))    # comments out
    body = src.replace("\\\n", " ")                       # one line per macro definition
    defines = re.findall(r"^\s*#define\s+(\w+)\((\w+)[^)]*\)(.*)$", body, re.M)
    plain = re.sub(r"^\s*#define.*$", "", body, flags=re.M)
    names = set(re.findall(KERNEL, plain))
    for macro, arg, text in defines:
        suffixes = [m.group(1)[len(arg):].replace("##", "") for m in re.finditer(KERNEL, text)
                    if m.group(1).split("##")[0] == arg]
        for inv in re.findall(rf"^{macro}\((\w+)", src, re.M):
            names |= {inv + sfx for sfx in suffixes}
    return names


def _pattern(node: ast.expr, consts: dict) -> str | None:
    """A literal (or module constant) string as a regex; an f-string with \\w+ for its fields."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.Name) and node.id in consts:
        return re.escape(consts[node.id])
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+" for v in node.values)
    if isinstance(node, ast.IfExp):                      # "bn_apply_lcn4" if v == 4 else "bn_apply_lcn"
        a, b = _pattern(node.body, consts), _pattern(node.orelse, consts)
        return f"(?:{a}|{b})" if a and b else None
    return None


def launches(path: Path) -> list[tuple[str, str | None, int]]:
    """(kernel file, kernel name regex, line) of every launch-like call: b.launch(file, kernel, ...),
    reduce_wg(b, file, kernel, ...), rt.kernel(file, kernel, ...); the regex is None when the kernel
    is a variable (a launcher handed the name, e.g. activation._unary)."""
    tree = ast.parse(path.read_text(), str(path))
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = node.args[1:] if name == "reduce_wg" else node.args
        if name not in ("launch", "kernel", "reduce_wg") or len(args) < 2:
            continue
        file, kernel = _pattern(args[0], consts), _pattern(args[1], consts)
        if file and file.endswith(r"\.cl"):
            out.append((file.replace("\\", ""), kernel, node.lineno))
    return out


def _modules(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.py"))}


def test_every_kernel_file_belongs_to_an_op_family_or_the_backend():
    ops = set(_modules(OPS)) - OP_INFRA
    stray = []
    for cl in sorted(KERNELS.glob("*.cl")):
        if cl.name in SHARED or cl.stem in ops:
            continue
        if cl.name in BACKEND_FILES and (BACKEND / BACKEND_FILES[cl.name]).is_file():
            continue
        stray.append(cl.name)
    assert not stray, f"kernel files named like no op module (device_agent/ops/) nor backend module: {stray}"


def test_an_op_module_launches_only_its_own_kernel_file():
    wrong = []
    for stem, path in _modules(OPS).items():
        allowed = PLUMBING.get(stem, {f"{stem}.cl"})
        for file, kernel, line in launches(path):
            if file not in allowed:
                wrong.append(f"ops/{path.name}:{line} launches {file} ({kernel}); its file is {sorted(allowed)}")
            elif not (KERNELS / file).is_file():
                wrong.append(f"ops/{path.name}:{line}: kernels/{file} does not exist")
    assert not wrong, "\n".join(wrong)


def test_the_backend_launches_only_its_own_kernel_files():
    wrong = []
    for stem, path in _modules(BACKEND).items():
        for file, kernel, line in launches(path):
            owner = BACKEND_FILES.get(file)
            if owner != f"{stem}.py" and file not in PLUMBING.get(stem, ()):
                wrong.append(f"backends/opencl/{path.name}:{line} launches {file} ({kernel})")
    assert not wrong, "\n".join(wrong)


def _strings(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_every_launched_kernel_exists_and_every_kernel_is_launched():
    defined = {cl.name: kernels_in(cl.read_text()) for cl in KERNELS.glob("*.cl")}
    missing, used = [], {f: set() for f in defined}
    for path in [*_modules(OPS).values(), *_modules(BACKEND).values()]:
        names = _strings(path)                # a name handed to a launcher is one of its module's strings
        for file, kernel, line in launches(path):
            ks = defined.get(file, set())
            hits = {k for k in ks if re.fullmatch(kernel, k)} if kernel else ks & names
            if kernel and not hits:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {file} has no kernel matching '{kernel}'")
            used.setdefault(file, set()).update(hits)
    assert not missing, "\n".join(missing)
    unused = {f: sorted(ks - used[f]) for f, ks in defined.items() if ks - used[f]}
    assert not unused, f"kernels no launcher names (dead code, or a launcher this test cannot read): {unused}"


def test_kernels_in_reads_macros_and_plain_kernels():
    src = ("__kernel void a_fwd(int n) {}\n#define B(NAME, E) \\\n__kernel void NAME##_x(int n) { E; } \\\n"
           "__kernel void NAME##_y(int n) { E; }\nB(add, 1)\nB(mul, 2)\n"
           "#define G(NAME, T) __kernel __attribute__((reqd_work_group_size(8, 8, 1))) void NAME(int n) { T; }\n"
           "G(g_nn, 0)\n// __kernel void commented_out(int n)\n")
    assert kernels_in(src) == {"a_fwd", "add_x", "add_y", "mul_x", "mul_y", "g_nn"}


if __name__ == "__main__":
    for stem, path in _modules(OPS).items():
        files = sorted({f for f, _, _ in launches(path)})
        print(f"ops/{path.name:16} -> {', '.join(files) or '(no launch: through b.gemm or an alias)'}")
    for cl in sorted(KERNELS.glob("*.cl")):
        print(f"kernels/{cl.name:16} {', '.join(sorted(kernels_in(cl.read_text())))}")
