"""Several devices at once: `--devices SERIAL,SERIAL,local|all` as one Target per device.

    tgts = device_targets("R58M123,emulator-5554,local", target())
    tgts = device_targets("all", target())        # every phone `thomas devices` lists as ready

A serial is a phone as `adb devices` lists it, reached as `-s SERIAL` would reach it (its Termux daemon
once paired, else adb shell; the global --mode, --device-root, --python and --su apply to every phone).
`local` is this computer's device folder ($THOMAS_HOME/device, this Python; the global --device-root and
--python apply to it only with --device local). `all` is every attached phone in state `device`.
"""
from __future__ import annotations

from dataclasses import replace

from .device import Target
from .transport.base import DeviceError


def device_targets(spec: str, base: Target) -> list[Target]:
    """One Target per device of `spec` (comma-separated), in order; DeviceError naming a device that is
    not attached, not ready or named twice, or an empty list."""
    from .transport import adb

    names = [p.strip() for p in (spec or "").split(",") if p.strip()]
    if not names:
        raise DeviceError(f"--devices {spec!r}: name the devices, e.g. --devices SERIAL,SERIAL,local or all")
    rows = None
    out: list[tuple[str, Target]] = []
    for name in names:
        if name == "local":
            own = base.device == "local"
            out.append((name, Target(device="local", root=base.root if own else None,
                                     python=base.python if own else None)))
            continue
        if rows is None:
            rows = {r.serial: r.state for r in adb.list_devices()}
        phones = [s for s, st in rows.items() if st == "device"] if name == "all" else [name]
        if name == "all" and not phones:
            raise DeviceError("--devices all: no phone attached (see `thomas devices`; enable USB debugging)")
        for serial in phones:
            state = rows.get(serial)
            if state is None:
                have = ", ".join(rows) or "none"
                raise DeviceError(f"--devices: unknown device '{serial}' (attached: {have}; see `thomas devices`)")
            if state != "device":
                raise DeviceError(f"--devices: device '{serial}' is {state}, not ready (accept the USB debugging "
                                  f"prompt on the phone; see `thomas devices`)")
            phone = Target(su=base.su, mode=base.mode) if base.device == "local" else base
            out.append((serial, replace(phone, serial=serial, device="adb")))
    seen = set()
    for name, _ in out:
        if name in seen:
            raise DeviceError(f"--devices: '{name}' is named twice ({spec})")
        seen.add(name)
    return [t for _, t in out]
