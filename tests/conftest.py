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
