"""Shape-aware shipped GEMM tiles (issue 15 item 4): configs/tuning "gemm" -> "sizes" rules pick the
large-tile family for large products without a tuning file. The chooser on hand-made shapes per device
kind (the H100, another NVIDIA GPU, an unknown GPU, the phone profiles, the CPU device), every shipped
tile family against the numpy reference (C NaN-wiped), a tuning file's per-shape entry and params=
still winning, and a rule's tile over the device's limits skipped with one warning."""
import json

import numpy as np
import pytest

import clcheck
from clcheck import needs_cl
from device_agent.backends.opencl.gemm import parse_shape_key, shape_key, size_rule
from device_agent.resources import configs_dir

BIG = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16}
H100 = {"name": "h100-test", "vendor": "NVIDIA Corporation", "device": "NVIDIA H100 80GB HBM3", "kind": "gpu"}
A100 = {"name": "a100-test", "vendor": "NVIDIA Corporation", "device": "NVIDIA A100-SXM4-80GB", "kind": "gpu"}
ACME = {"name": "acme-test", "vendor": "Acme Graphics", "device": "Acme X1", "kind": "gpu"}
TILE = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC")


def test_size_rule_first_match_thresholds_and_malformed_rules():
    rules = [{"name": "bad"}, "junk", {"min_m": 1024, "min_n": 1024, "min_mnk": 2 ** 31, "tiles": {"MWG": 128}},
             {"min_k": 4096, "tiles": {"MWG": 32}}, {"tiles": {"MWG": 16}}]
    assert size_rule(rules, 4096, 4096, 4096)["tiles"] == {"MWG": 128}
    assert size_rule(rules, 2048, 2048, 512)["tiles"] == {"MWG": 128}      # 2^31 exactly
    assert size_rule(rules, 2048, 2048, 511)["tiles"] == {"MWG": 16}       # one short: the catch-all
    assert size_rule(rules, 1023, 8192, 8192)["tiles"] == {"MWG": 32}      # M too small, K large
    assert size_rule(rules[:3], 1024, 1024, 1024) is None
    assert size_rule(None, 9999, 9999, 9999) is None and size_rule({"tiles": {}}, 1, 1, 1) is None
    short = [{"max_k": 32, "tiles": {"LX": 32}}]
    assert size_rule(short, 4096, 9216, 32) == short[0] and size_rule(short, 8, 8, 33) is None
    assert parse_shape_key(shape_key("nt", 8, 1000, 1280, 32, True)) == ("nt", 8, 1000, 1280, 32)
    assert parse_shape_key(shape_key("tn", 4096, 4096, 4096)) == ("tn", 4096, 4096, 4096, 1)


def _config(rt, M, N, K, form="nn", **kw):
    from device_agent.backends.opencl.gemm import gemm_config
    from device_agent.backends.opencl.runtime import LaunchBuilder

    fam, p = gemm_config(LaunchBuilder(rt), None, kw.get("params"), M, shape=shape_key(form, M, N, K), N=N, K=K,
                         form=form)
    return fam, dict({k: p[k] for k in TILE}, PF=int(p.get("PF", 0))) if fam == "gpu" else p


def _tiles(mwg, nwg, kwg, mdimc, ndimc, pf=0):
    return dict(zip(TILE, (mwg, nwg, kwg, mdimc, ndimc)), PF=pf)


@pytest.fixture
def runtime_of(monkeypatch, tmp_path):
    """Runtime(profile) factory: the local device with a GPU's vendor/device strings (its tuning)."""
    from device_agent.backends.opencl.runtime import Runtime

    monkeypatch.setenv("THOMAS_TUNING_FILE", str(tmp_path / "devices.json"))   # no tuning file
    made = []

    def make(profile=None):
        made.append(Runtime(profile=profile))
        return made[-1]
    yield make
    for rt in made:
        rt.close()


# shapes: the SGEMM squares and the largest model GEMMs of docs/bench/h100-gemm-2026-11-25.md
# the H100's tiles (2026-12-07, benchmarks/gemm_sweep.py): 64x64 with register prefetch (PF 1) for the
# model GEMMs, 128x64 with prefetch into two local buffers (PF 2) for large products
H100_LARGE, H100_MODEL = _tiles(128, 64, 16, 16, 16, pf=2), _tiles(64, 64, 16, 16, 16, pf=1)
H100_CASES = [((4096, 4096, 4096), H100_LARGE), ((2048, 2048, 2048), H100_LARGE),
              ((4096, 4096, 4096, "tn"), H100_LARGE),
              ((1024, 1024, 1024), H100_MODEL),       # 2^30 multiply-adds: below the rule
              ((4096, 9216, 32, "tn"), H100_MODEL),   # AlexNet fc dW at batch 32
              ((1600, 729, 192, "tn"), H100_MODEL),   # AlexNet conv5x5 dX
              ((1023, 8192, 8192), H100_MODEL)]


@needs_cl
def test_h100_large_products_get_the_large_tiles_without_a_tuning_file(runtime_of):
    rt = runtime_of(H100)
    for shape, want in H100_CASES:
        assert _config(rt, *shape) == ("gpu", want), shape


@needs_cl
def test_the_chooser_per_device_kind(runtime_of):
    """Only the H100 has a size rule: another NVIDIA GPU keeps its vendor's 128x128 everywhere, an unknown
    GPU and the phones keep their own tiles on every shape, and the CPU device its CPU tiles."""
    from device_agent.backends.opencl.limits import load_profiles

    a100 = runtime_of(A100)
    acme = runtime_of(ACME)
    for shape in ((4096, 4096, 4096), (64, 64, 64)):
        assert _config(a100, *shape) == ("gpu", _tiles(128, 128, 16, 16, 16))
        assert _config(acme, *shape) == ("gpu", _tiles(64, 64, 16, 8, 8))
    for name in load_profiles():
        rt = runtime_of(name)
        assert _config(rt, 4096, 4096, 4096) == _config(rt, 200, 200, 200), name
    cpu = runtime_of()
    if cpu.kind == "cpu":
        fam, p = _config(cpu, 4096, 4096, 4096)
        assert fam == "cpu" and p["TM"] == 6 and p["TN"] == 16


@needs_cl
def test_hand_made_rules_for_a_cpu_kind_apply_to_large_products_only(runtime_of):
    rt = runtime_of()
    rt.tuning.override["gemm"] = {"sizes": [{"name": "wide", "min_n": 512, "min_mnk": 10 ** 6,
                                              "tiles": {"TM": 4, "TN": 32}}]}
    fam = rt.tuning.get("gemm").get("variant") or rt.kind
    if fam != "cpu":
        pytest.skip("the local OpenCL device is not a CPU device")
    assert _config(rt, 100, 600, 100)[1]["TN"] == 32 and _config(rt, 100, 600, 100)[1]["TM"] == 4
    assert _config(rt, 100, 500, 100)[1]["TN"] == 16            # N below min_n
    assert _config(rt, 10, 600, 100)[1]["TN"] == 16             # 600 000 multiply-adds


@needs_cl
def test_a_tuning_files_per_shape_entry_and_params_still_win(runtime_of, tmp_path):
    from device_agent.backends.opencl.runtime import device_key

    rt0 = runtime_of(H100)
    key = device_key(rt0.device) + "|" + H100["name"]
    tuned = _tiles(64, 128, 16, 16, 16)
    (tmp_path / "devices.json").write_text(json.dumps(
        {key: {"gemm": {"params": {"MWG": 32, "NWG": 64, "MDIMC": 8, "NDIMC": 16,
                                   "shapes": {"nn 4096x4096x4096": tuned}}}}}))
    rt = runtime_of(H100)
    assert _config(rt, 4096, 4096, 4096) == ("gpu", tuned)                      # per-shape entry > rule
    assert _config(rt, 4096, 4096, 4096, "nt") == ("gpu", H100_LARGE)             # rule > file's tiles
    # the file's own tiles; a file without PF keeps the device's (bit-identical, the H100's is 1)
    assert _config(rt, 512, 512, 512) == ("gpu", _tiles(32, 64, 16, 8, 16, pf=1))
    assert _config(rt, 4096, 4096, 4096, params=_tiles(32, 32, 8, 8, 8)) == ("gpu", _tiles(32, 32, 8, 8, 8))


@needs_cl
def test_a_tile_named_in_params_is_not_swapped_for_the_small_one(runtime_of, monkeypatch):
    """The H100's "small" tile (32x64, for products with few work-groups: FC layers at batch 32) takes the
    place of its own tiles, not of a tile the caller names in params= (tests, benchmarks): through gemm()
    a 17x5 product launches the named 16x16 tile, and without params= the small one"""
    from device_agent.backends.opencl.gemm import gemm_config
    from device_agent.backends.opencl.runtime import LaunchBuilder
    from test_cl_gemm_conv import check, run_gemm

    rt = runtime_of(H100)
    b = LaunchBuilder(rt)
    t16 = _tiles(16, 16, 4, 4, 4)
    small = {"MWG": 32, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 16, "LPAD": 0}
    assert gemm_config(b, None, None, 32, N=4096, K=9216)[1]["small"] == small
    assert "small" not in gemm_config(b, None, t16, 32, N=4096, K=9216)[1]
    assert gemm_config(b, None, {"PF": 0}, 32, N=4096, K=9216)[1]["small"] == small     # no tile named
    assert gemm_config(b, None, dict(t16, small=t16), 32, N=4096, K=9216)[1]["small"] == t16
    monkeypatch.setattr(clcheck, "_RT", rt)
    seen, orig = [], rt.kernel

    def spy(name, kernel, defines=None):
        seen.append((kernel, dict(defines or {})))
        return orig(name, kernel, defines)
    monkeypatch.setattr(rt, "kernel", spy)
    for params, want in ((t16, (16, 16, 4)), (None, (32, 64, 16))):
        seen.clear()
        got, want_c = run_gemm("nn", 17, 5, 64, None, params, seed=3)
        check(got, want_c, 64)
        assert {(d["MWG"], d["NWG"], d["KWG"]) for k, d in seen if k == "gemm_gpu_nn"} == {want}, seen


@needs_cl
def test_a_rule_tile_over_the_device_limits_is_skipped_with_one_warning(runtime_of, capsys):
    rt = runtime_of("powervr")             # 4 KB of local memory: 128x128 K-slices need 16 KB
    base = _config(rt, 1024, 1024, 1024)
    rt.tuning.override["gemm"] = {"sizes": [{"name": "large", "min_m": 512, "tiles": BIG}]}
    for _ in range(2):
        assert _config(rt, 1024, 1024, 1024) == base
    err = [ln for ln in capsys.readouterr().err.splitlines() if "size rule 'large'" in ln]
    assert len(err) == 1 and "local tiles" in err[0] and err[0].startswith("thomas: warning:"), err


def _shipped_families() -> dict:
    """Every distinct tile set configs/tuning ships (each gemm section, its small/skinny tiles, every
    size rule's tiles over its section): name -> (family, params)."""
    out = {}

    def walk(name, fam, p):
        p = {k: v for k, v in p.items() if not isinstance(v, (dict, list)) and k not in ("variant", "skinny_m")}
        out.setdefault((fam, tuple(sorted(p.items()))), (name, fam, p))

    for path in sorted((configs_dir() / "tuning").glob("*.json")):
        doc = json.loads(path.read_text())
        secs = [(f"default-{k}", k, v.get("gemm")) for k, v in doc.get("default", {}).items()]
        secs += [(f"{ven}-{dev}", None, ops.get("gemm")) for ven, devs in doc.get("vendors", {}).items()
                 for dev, ops in devs.items()]
        for name, kind, g in secs:
            if not g:
                continue
            fam = g.get("variant") or kind or "gpu"
            walk(name, fam, g)
            for alt in ("small", "skinny"):
                if isinstance(g.get(alt), dict):
                    walk(f"{name}-{alt}", fam, dict(g, **g[alt]))
            for r in g.get("sizes", []):
                walk(f"{name}-size-{r.get('name', '')}", fam, dict(g, **r["tiles"]))
    return {name: (fam, p) for name, fam, p in out.values()}


def test_the_shipped_families_include_the_large_rule():
    fams = _shipped_families()
    assert any(f == "gpu" and p.items() >= BIG.items() for f, p in fams.values())
    assert any(f == "cpu" for f, _ in fams.values()) and len(fams) >= 8


@needs_cl
@pytest.mark.parametrize("name", sorted(_shipped_families()))
def test_every_shipped_family_matches_numpy(name):
    from test_cl_gemm_conv import check, run_gemm

    fam, params = _shipped_families()[name]
    for form in ("nn", "nt", "tn"):
        got, want = run_gemm(form, 133, 70, 37, fam, params, bias_mode="col", seed=3)   # partial tiles, C NaN
        check(got, want, 37)


@needs_cl
def test_the_rule_runs_end_to_end_and_a_per_shape_entry_overrides_it(runtime_of, monkeypatch):
    """Through gemm() with no params=: a hand-made low-threshold rule launches the 128x128 tile (the
    work-group grid says so) and computes the reference; a per-shape entry for that shape wins."""
    from test_cl_gemm_conv import check, run_gemm

    rt = runtime_of(H100)
    monkeypatch.setattr(clcheck, "_RT", rt)
    small = shape_key("nn", 130, 150, 40)
    rt.tuning.override["gemm"] = {"sizes": [{"name": "low", "min_m": 100, "min_n": 100, "tiles": BIG}],
                                  "shapes": {}, "min_groups": 1}
    for shapes, nwg in (({}, 128), ({small: _tiles(32, 32, 8, 8, 8)}, 32)):
        rt.tuning.override["gemm"]["shapes"] = shapes
        launches = []
        orig = rt.kernel

        def spy(name, kernel, defines=None):
            launches.append((kernel, dict(defines or {})))
            return orig(name, kernel, defines)
        monkeypatch.setattr(rt, "kernel", spy)
        got, want = run_gemm("nn", 130, 150, 40, None, None, seed=5)
        monkeypatch.setattr(rt, "kernel", orig)
        check(got, want, 40)
        used = {d["NWG"] for k, d in launches if k == "gemm_gpu_nn"}
        assert used == {nwg}, launches


def test_tune_pins_rule_covered_shapes_to_their_measured_winner():
    """thomas tune times each variant as itself (size rules off); a shape a shipped rule covers keeps the
    fastest variant's tiles as a per-shape entry, unless pick_shapes already chose one; others untouched."""
    from device_agent.bench.tune import pin_sized

    sizes = [{"name": "large", "min_m": 1024, "min_n": 1024, "min_mnk": 2 ** 31, "tiles": BIG}]
    big, big2, small = "nn 4096x4096x4096", "tn 2048x2048x2048 b2", "nt 64x3025x363 b32"
    a, b = dict(_tiles(64, 64, 16, 16, 16), variant="gpu"), dict(BIG, variant="gpu")
    results = [(10.0, 0, a, {big: 3.0, big2: 1.0, small: 0.5, "conv1/gemm": 0.1}),
               (12.0, 1, b, {big: 2.0, big2: 1.5, small: 0.9, "conv1/gemm": 0.1})]
    assert pin_sized(results, sizes, {}) == {big: BIG, big2: _tiles(64, 64, 16, 16, 16)}
    assert pin_sized(results, sizes, {big: {"MWG": 32}}) == {big2: _tiles(64, 64, 16, 16, 16)}
    assert pin_sized(results, None, {}) == {} and pin_sized([], sizes, {}) == {}
