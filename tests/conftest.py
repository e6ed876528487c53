import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Compiled OpenCL programs are cached per checkout, never in the user's ~/.cache.
_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache"
os.environ.setdefault("THOMAS_CL_CACHE", str(_CACHE / "thomas-cl"))
os.environ.setdefault("POCL_CACHE_DIR", str(_CACHE / "pocl"))


@pytest.fixture(autouse=True)
def _thomas_home(tmp_path, monkeypatch):
    """Every test gets its own THOMAS_HOME, never the user's ~/.thomas."""
    monkeypatch.setenv("THOMAS_HOME", str(tmp_path / "thomas_home"))
    yield


# ============================================================================ virtual phones (tests/virtual_adb.py)
def need_adb() -> None:
    import shutil

    if shutil.which("adb") is None:
        pytest.skip("the virtual adb device needs the `adb` binary (Debian package adb; `make setup` installs it)")


@pytest.fixture(scope="module")
def shared_vdev(tmp_path_factory):
    """One virtual phone for a module's happy-path tests (each test gets its own root on it)."""
    from virtual_adb import VirtualDevice

    need_adb()
    with VirtualDevice(tmp_path_factory.mktemp("phone")) as vd:
        yield vd


@pytest.fixture
def own_vdev(tmp_path):
    """A virtual phone of one test alone (for the tests that kill, freeze or cut it)."""
    from virtual_adb import VirtualDevice

    need_adb()
    with VirtualDevice(tmp_path / "phone") as vd:
        yield vd


@pytest.fixture
def one_torch_thread():
    """pytest -n runs one worker per core: a second torch thread per worker only oversubscribes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
