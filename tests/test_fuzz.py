"""Seeded fuzz suite: hostile inputs to every entry point a user's files reach.

For each input (tests/fuzz_cases.py builds them): exit 1 or 2, exactly one line on stderr, no
traceback, done within 30 s and 1 GiB above the test process, and nothing half-written left on the
device or the host that a later command would accept. Each kind's table (tried / clean / traceback /
hang / left behind) is written to .pytest_cache/fuzz/<kind>.json for the record.

Cases run in forked children of this process (tests/fuzzkit.py), so ~250 inputs take about a minute.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fuzz_cases as fc
from fuzzkit import run_cli, tree

SEED = 20261206
TABLES = Path(__file__).resolve().parents[1] / ".pytest_cache" / "fuzz"


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    """A local device with a tiny imported model ('tiny') and a dataset ('d') on it."""
    base = tmp_path_factory.mktemp("fuzz")
    root, home = base / "device", base / "home"
    env = {"THOMAS_HOME": str(home)}
    dev = ["--device", "local", "--device-root", str(root)]
    onnx_path = base / "tiny.onnx"
    onnx_path.write_bytes(fc.tiny_onnx().SerializeToString())
    pkg = base / "tiny-pkg"
    for argv in (["import", onnx_path, "-o", pkg],
                 [*dev, "push-model", pkg, "--name", "tiny"]):
        v = run_cli(argv, env, expect=(0,))
        assert v.code == 0, (v.argv, v.stdout, v.stderr)
    rng = np.random.default_rng(0)
    npz = fc.write_npz(base / "d.npz", {"x": rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
                                         "y": np.arange(24) % 3})
    v = run_cli([*dev, "push-data", npz, "--size", "8", "--name", "d"], env, expect=(0,))
    assert v.code == 0, (v.stdout, v.stderr)
    return {"base": base, "root": root, "home": home, "env": env, "dev": dev, "pkg": pkg}


def _judge(kind: str, cases: list, fz: dict, watch: list[Path]) -> None:
    """Run every case; assert all clean; write the kind's table."""
    counts, bad = Counter(), []
    for c in cases:
        before = {str(w): tree(w) for w in watch}
        v = run_cli([*fz["dev"], *c.argv], {**fz["env"], **c.env}, expect=c.expect)
        counts["tried"] += 1
        left = _left_behind(before, watch) if v.code not in (0, None) else []
        if v.code == 0 and c.check is not None:
            try:
                c.check(fz["base"])
            except Exception as e:  # noqa: BLE001  (what an exit 0 wrote must be usable)
                v.why = f"exit 0 but the result is unusable: {e}"
        if v.clean and not left:
            counts["clean"] += 1
            continue
        key = ("traceback" if v.why == "traceback" else "hang" if v.why.startswith("hung")
               else "left behind" if v.clean else "other")
        counts[key] += 1
        bad.append(f"{c.label}: {v.why or 'left ' + ', '.join(left[:3])} | exit {v.code} | "
                   f"{(v.stderr.strip().splitlines() or [''])[-1][:160]}")
    TABLES.mkdir(parents=True, exist_ok=True)
    (TABLES / f"{kind}.json").write_text(json.dumps({"kind": kind, **counts, "failures": bad}, indent=1))
    assert not bad, f"{len(bad)} of {len(cases)} {kind} inputs not handled cleanly:\n" + "\n".join(bad)


def _left_behind(before: dict, watch: list[Path]) -> list[str]:
    """New files after a refused command, outside the places a failed command may write
    (its own run record and job file, the OpenCL cache, a dataset's verified-hash cache)."""
    new = []
    for w in watch:
        now = tree(w)
        for rel in set(now) - set(before[str(w)]):
            if rel.startswith(("runs/", "jobs/", "cl-cache/", "tuning/", ".daemon/", "agent/")) \
                    or rel.endswith("/.verified.json"):      # a run's own record; the shard hash cache
                continue
            new.append(f"{w.name}/{rel}")
    return sorted(new)


def test_fuzz_import(fuzz_env, tmp_path):
    cases = fc.import_cases(tmp_path, SEED)
    assert len(cases) >= 50
    _judge("import", cases, fuzz_env, [tmp_path])


@pytest.mark.parametrize("command", ["inspect", "push-model"])
def test_fuzz_packages(fuzz_env, tmp_path, command):
    pkgs = fc.package_cases(tmp_path, fuzz_env["pkg"], SEED)
    cases = [fc.Case(f"{command}:{label}", [command, d] + (["--name", f"p{i}"] if command == "push-model" else []))
             for i, (label, d) in enumerate(pkgs)]
    assert len(cases) >= 45
    _judge(command, cases, fuzz_env, [fuzz_env["root"]])


def test_fuzz_push_data(fuzz_env, tmp_path):
    cases = fc.data_cases(tmp_path, SEED)
    assert len(cases) >= 40
    _judge("push-data", cases, fuzz_env, [fuzz_env["root"]])


def test_fuzz_jobs(fuzz_env, tmp_path):
    import uuid

    escape = f"/tmp/thomas-fuzz-escape-{uuid.uuid4().hex[:12]}"     # fresh: no other run made it
    cases = fc.job_cases(tmp_path, "tiny", "d", escape)
    assert len(cases) >= 45
    try:
        _judge("job", cases, fuzz_env, [fuzz_env["root"]])
        for escaped in (escape, escape + "-out"):
            assert not Path(escaped).exists(), f"a job field wrote outside the device root: {escaped}"
    finally:
        for escaped in (escape, escape + "-out"):
            shutil.rmtree(escaped, ignore_errors=True)


def _shard_corruptions(d: Path, rng) -> list:
    """(label, edit(dataset dir)) for a pushed dataset directory."""
    meta = json.loads((d / "dataset.json").read_text())
    shard = meta["splits"]["train"]["shards"][0]
    img, lab = shard["images"], shard["labels"]

    def put(name, data):
        return lambda p: (p / name).write_bytes(data)

    def edit_meta(fn):
        def go(p):
            m = json.loads((p / "dataset.json").read_text())
            fn(m)
            (p / "dataset.json").write_text(json.dumps(m))
        return go

    raw_img = (d / img).read_bytes()
    return [
        ("meta-garbage", put("dataset.json", b"{nope")),
        ("meta-deep", put("dataset.json", fc.deep_json(200_000).encode())),
        ("meta-missing", lambda p: (p / "dataset.json").unlink()),
        ("meta-count", edit_meta(lambda m: m["splits"]["train"].__setitem__("count", 10**12))),
        ("meta-height", edit_meta(lambda m: m.__setitem__("height", -1))),
        ("meta-shard-escape", edit_meta(lambda m: m["splits"]["train"]["shards"][0].__setitem__(
            "images", "../../../etc/passwd"))),
        ("meta-classes", edit_meta(lambda m: m.__setitem__("num_classes", 0))),
        ("images-truncated", put(img, raw_img[: len(raw_img) // 2])),
        ("images-flipped", put(img, fc.mutate(raw_img, rng, 30))),
        ("images-object", put(img, fc.npy_bytes(np.array([None] * 4, dtype=object)))),
        ("images-huge-header", put(img, fc.npy_header_bytes((10**6, 10**6, 8, 3), "|u1"))),
        ("labels-range", put(lab, fc.npy_bytes(np.full(shard["count"], 2**40, np.int64)))),
        ("labels-negative", put(lab, fc.npy_bytes(np.full(shard["count"], -1, np.int64)))),
        ("labels-float", put(lab, fc.npy_bytes(np.zeros(shard["count"], np.float32)))),
        ("classes-garbage", put("classes.json", b"[[[")),
        ("images-missing", lambda p: (p / img).unlink()),
    ]


def test_fuzz_dataset_shards(fuzz_env):
    rng = np.random.default_rng(SEED)
    src = fuzz_env["root"] / "data" / "d"
    cases = []
    for label, edit in _shard_corruptions(src, rng):
        name = f"bad-{label}"
        dst = src.parent / name
        shutil.copytree(src, dst)
        edit(dst)
        # a corrupted shard may be caught by its hash (exit 1) or, for a benign flip, train (exit 0)
        expect = (0, 1) if label == "images-flipped" else (1,)
        cases.append(fc.Case(f"shard:{label}", ["finetune", "tiny", "--data", name, "--epochs", "1",
                                                "--batch", "4", "--backend", "cpu"], expect))
    _judge("dataset-shard", cases, fuzz_env, [fuzz_env["base"] / "nothing"])


def test_fuzz_checkpoints(fuzz_env):
    """Corrupt every checkpoint of a finished run's copy, then resume: a clean refusal, or a
    resume that skips what is corrupt and finishes (exit 0)."""
    env, dev, home = fuzz_env["env"], fuzz_env["dev"], fuzz_env["home"]
    v = run_cli([*dev, "finetune", "tiny", "--data", "d", "--epochs", "2", "--batch", "4", "--backend", "cpu",
                 "--layers", "all", "--json"], env, expect=(0,))
    assert v.code == 0, v.stderr
    run_id = [json.loads(ln) for ln in v.stdout.splitlines() if ln.startswith("{")][0].get("run")
    runs = sorted((fuzz_env["root"] / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    run_dir = runs[-1]
    run_id = run_id or run_dir.name
    ckpts = sorted((run_dir / "ckpt").glob("*.npz"))
    assert ckpts, list(run_dir.rglob("*"))
    saved = {p: p.read_bytes() for p in ckpts}
    rng = np.random.default_rng(SEED)
    corruptions = {
        "garbage": lambda b: b"PK\x03\x04garbage",
        "empty": lambda b: b"",
        "truncated": lambda b: b[: len(b) // 3],
        "flipped": lambda b: fc.mutate(b, rng, 40),
        "object": lambda b: fc._npz_bytes({"step": np.array([None], dtype=object)}),
        "huge-header": lambda b: fc._npz_raw({"step": fc.npy_header_bytes((10**7, 10**7))}),
        "wrong-arrays": lambda b: fc._npz_bytes({"bogus": np.zeros(3)}),
    }
    counts, bad = Counter(), []
    for label, corrupt in corruptions.items():
        for p, b in saved.items():
            p.write_bytes(corrupt(b))
        for extra in ((run_dir / "final"),):
            if extra.exists():
                shutil.rmtree(extra)
        v = run_cli([*dev, "finetune", "--resume", run_id], env, expect=(0, 1))
        counts["tried"] += 1
        if v.clean:
            counts["clean"] += 1
        else:
            bad.append(f"ckpt:{label}: {v.why} | {v.stderr.strip()[-300:]}")
    for p, b in saved.items():
        p.write_bytes(b)
    TABLES.mkdir(parents=True, exist_ok=True)
    (TABLES / "checkpoint.json").write_text(json.dumps({"kind": "checkpoint", **counts, "failures": bad}))
    assert not bad, "\n".join(bad)
