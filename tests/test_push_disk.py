"""push-data / push-model onto a full or read-only device root (a small tmpfs mounted for the test; skipped
where mount is not permitted): one line naming the path and the fix, exit 1, no temp folder left behind;
stale `.push-NAME-PID` folders of dead pushes are swept by the next push."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicekit import DeviceTarget, thomas
from test_push_data import arrays, one_line_error, strip_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/mnt (root only); yields (mount point, remount(ro: bool))."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root and CAP_SYS_ADMIN")

    def remount(ro: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(mnt)], check=True)
    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _dev(root: Path) -> DeviceTarget:
    return DeviceTarget("local", root, ["--device", "local", "--device-root", str(root), "--python", sys.executable])


def _leftovers(root: Path) -> list[str]:
    return [p.name for d in ("data", "models") if (root / d).is_dir() for p in (root / d).iterdir()]


def test_a_full_device_is_one_line_and_keeps_nothing(small_disk, tmp_path, monkeypatch):
    mnt, _ = small_disk
    dev = _dev(mnt / "thomas")
    x, y = arrays(60, 32, 64)                          # ~370 KiB as RGB: more than the disk
    np.savez(tmp_path / "big.npz", x=x, y=y)
    r = thomas(dev, "push-data", str(tmp_path / "big.npz"), expect=1)
    one_line_error(r, "no space left", "data/big", "MiB free", "free space")
    assert _leftovers(dev.root) == []
    # the free-space check passes (a device that cannot tell): the write itself fails ENOSPC mid-push
    from thomas_cli.transport.local import LocalTransport
    monkeypatch.setattr(LocalTransport, "free_bytes", lambda self: None)
    r = thomas(dev, "push-data", str(tmp_path / "big.npz"), expect=1)
    line = one_line_error(r, "no space left", str(mnt), "free space on the device", "push again")
    assert "/.push-big-" in line and "thomas-data-" not in line         # names the device file, not the source
    assert _leftovers(dev.root) == []                                   # its temp folder is gone
    x, y = arrays(20, 8, 8)
    np.savez(tmp_path / "fits.npz", x=x, y=y)
    thomas(dev, "push-data", str(tmp_path / "fits.npz"))                # the space is really free again
    assert _leftovers(dev.root) == ["fits"]


def test_a_read_only_device_is_one_line(small_disk, tmp_path):
    mnt, remount = small_disk
    dev = _dev(mnt / "thomas")
    (mnt / "thomas").mkdir()
    remount(True)
    x, y = arrays(20, 8, 8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    one_line_error(thomas(dev, "push-data", str(tmp_path / "d.npz"), expect=1), "read-only", str(mnt / "thomas"),
                   "--device-root")
    pkg = strip_model(tmp_path / "m", 3, 8, 8)
    one_line_error(thomas(dev, "push-model", str(pkg), expect=1), "read-only", "models", "--device-root")
    remount(False)
    assert _leftovers(dev.root) == []


def test_stale_push_folders_of_dead_pushes_are_swept(tmp_path):
    dev = _dev(tmp_path / "device")
    dead = 4_999_999                                   # above Linux's pid_max: never a live process
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    for name in (f".push-old-{dead}", ".push-live-1"):   # pid 1 is alive: a push in progress, kept
        (dev.root / "data" / name).mkdir(parents=True)
        (dev.root / "data" / name / "train-00000.images.npy").write_bytes(b"\0" * 1000)
    x, y = arrays(20, 8, 8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    thomas(dev, "push-data", str(tmp_path / "d.npz"))
    assert sorted(_leftovers(dev.root)) == [".push-live-1", "d"]
