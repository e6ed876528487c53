"""Energy and temperature per epoch from sysfs, where readable; a sensor that is not there is None.

    tel = Telemetry()                 # root "/" (THOMAS_SYSFS_ROOT overrides it: tests, odd kernels)
    tel.tick()                        # on every step: one power sample, at most every MIN_GAP s
    ev = tel.epoch(3)                 # -> Telemetry event: joules and temperatures since the last epoch()

Sources:
  battery  /sys/class/power_supply/*/current_now (µA) x voltage_now (µV): power, integrated over the
           epoch with the trapezoid rule (Android: the battery; |I| because vendors disagree on the sign)
  rapl     /sys/class/powercap/intel-rapl:*/energy_uj (Linux hosts; often root-only): the counter's
           difference, with its wrap at max_energy_range_uj
  thermal  /sys/class/thermal/thermal_zone*/temp (m°C), named by the zone's `type`
Nothing here raises on a missing, unreadable or garbled file: that reading is None.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..protocol import TelemetryEvent

MIN_GAP = 0.2      # s between power samples


def _read_int(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


class Telemetry:
    def __init__(self, root: str | os.PathLike | None = None, clock=time.monotonic):
        self.root = Path(root or os.environ.get("THOMAS_SYSFS_ROOT") or "/")
        self.clock = clock
        cls = self.root / "sys" / "class"
        self.supplies = sorted(p for p in _glob(cls / "power_supply", "*")
                               if (p / "current_now").exists() and (p / "voltage_now").exists())
        self.rapl = sorted(p for p in _glob(cls / "powercap", "intel-rapl:*")
                           if p.name.count(":") == 1 and (p / "energy_uj").exists())   # packages, not sub-zones
        self.zones = sorted(_glob(cls / "thermal", "thermal_zone*"), key=lambda p: (len(p.name), p.name))
        self._start()

    def _start(self) -> None:
        self.t0 = self.clock()
        self.joules = 0.0 if self.supplies else None
        self.last = self._power()
        self.rapl0 = {p: _read_int(p / "energy_uj") for p in self.rapl}
        self.temp_max: float | None = None

    def _power(self) -> tuple[float, float] | None:
        """(time, watts summed over the supplies that read), or None when none reads."""
        w, ok = 0.0, False
        for p in self.supplies:
            i, v = _read_int(p / "current_now"), _read_int(p / "voltage_now")
            if i is not None and v is not None:
                w += abs(i) * 1e-6 * v * 1e-6
                ok = True
        return (self.clock(), w) if ok else None

    def temps(self) -> dict:
        out = {}
        for z in self.zones:
            mc = _read_int(z / "temp")
            try:
                name = (z / "type").read_text().strip() or z.name
            except OSError:
                name = z.name
            if name in out:
                name = f"{name}.{z.name}"
            out[name] = None if mc is None else mc / 1000.0
        return out

    def tick(self, force: bool = False) -> None:
        """A power sample (rate-limited); also tracks the epoch's highest temperature."""
        if not force and self.last is not None and self.clock() - self.last[0] < MIN_GAP:
            return
        now = self._power()
        if now is not None and self.last is not None and self.joules is not None:
            self.joules += (now[0] - self.last[0]) * (now[1] + self.last[1]) / 2
        if now is not None:
            self.last = now
        hot = [t for t in self.temps().values() if t is not None]
        if hot:
            self.temp_max = max(hot + ([self.temp_max] if self.temp_max is not None else []))

    def _rapl_joules(self) -> float | None:
        total, ok = 0.0, False
        for p in self.rapl:
            a, b = self.rapl0.get(p), _read_int(p / "energy_uj")
            if a is None or b is None:
                continue
            if b < a:                                   # the counter wrapped
                top = _read_int(p / "max_energy_range_uj")
                if top is None:
                    continue
                b += top
            total += (b - a) * 1e-6
            ok = True
        return total if ok else None

    def epoch(self, epoch: int) -> TelemetryEvent:
        """The Telemetry event of the epoch that just ended; starts the next one."""
        self.tick(force=True)
        seconds = self.clock() - self.t0
        temps = self.temps()
        battery = self.joules if self.last is not None else None
        ev = TelemetryEvent(epoch=epoch, seconds=round(seconds, 3),
                            battery_j=None if battery is None else round(battery, 3),
                            battery_w=None if battery is None or seconds <= 0 else round(battery / seconds, 3),
                            rapl_j=_round(self._rapl_joules()), temps=temps,
                            temp_max=self.temp_max)
        self._start()
        return ev


def _round(v):
    return None if v is None else round(v, 3)


def _glob(d: Path, pat: str) -> list[Path]:
    try:
        return list(d.glob(pat)) if d.is_dir() else []
    except OSError:
        return []
