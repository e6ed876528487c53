"""Several devices at once: `--devices SERIAL,SERIAL,local|all` as one Target per device.

    tgts = device_targets("R58M123,emulator-5554,local", target())
    tgts = device_targets("all,local", target())   # every phone `thomas devices` lists as ready, and local

A serial is a phone as `adb devices` lists it, reached as `-s SERIAL` would reach it (its Termux daemon
once paired, else adb shell; the global --mode, --device-root, --python and --su apply to every phone).
`local` is this computer's device folder, always $THOMAS_HOME/device run by this Python (the global
--device-root is a phone's), as `thomas fleet finetune --devices` reads it. `all` is every attached phone
in state `device`; a phone that `all` also names is kept once.
"""
from __future__ import annotations

from .device import Target
from .transport.base import DeviceError


def device_targets(spec: str, base: Target) -> list[Target]:
    """One Target per device of `spec` (comma-separated), in order; DeviceError naming a device that is
    not attached, not ready or named twice, or an empty list."""
    from .transport import adb

    names = [p.strip() for p in (spec or "").split(",") if p.strip()]
    if not names:
        raise DeviceError(f"--devices {spec!r}: name the devices, e.g. --devices SERIAL,SERIAL,local or all")
    rows = {r.serial: r.state for r in adb.list_devices()} if set(names) - {"local"} else {}
    serials: list[str] = []
    for name in names:
        if name == "all":
            ready = [s for s, state in rows.items() if state == "device"]
            if not ready:
                raise DeviceError("--devices all: no phone attached (see `thomas devices`; enable USB debugging)")
            serials += ready
        else:
            serials.append(name)
    out, seen = [], set()
    for serial in serials:
        if serial in seen:
            if "all" in names:
                continue
            raise DeviceError(f"--devices: '{serial}' is named twice ({spec})")
        seen.add(serial)
        if serial == "local":
            out.append(Target(device="local"))
            continue
        state = rows.get(serial)
        if state is None:
            raise DeviceError(f"--devices: unknown device '{serial}' (attached: {', '.join(rows) or 'none'}; "
                              f"see `thomas devices`)")
        if state != "device":
            raise DeviceError(f"--devices: device '{serial}' is {state}, not ready (unlock it and accept the USB "
                              f"debugging prompt; see `thomas devices`)")
        out.append(Target(serial=serial, device="adb", root=base.root, python=base.python, su=base.su,
                          mode=base.mode))
    return out
