"""Telemetry from a fake sysfs root: battery joules, RAPL with a wrapped counter, thermal zones;
missing or garbled sensors are null, never errors; the `telemetry` event follows each `epoch`."""
from __future__ import annotations

import json

from device_agent.protocol import parse_event
from device_agent.training.telemetry import Telemetry


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _w(root, rel, v):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{v}\n")


def test_battery_rapl_thermal(tmp_path):
    sysfs = tmp_path
    _w(sysfs, "sys/class/power_supply/battery/current_now", -500000)     # 0.5 A (discharging: negative)
    _w(sysfs, "sys/class/power_supply/battery/voltage_now", 4000000)     # 4 V -> 2 W
    _w(sysfs, "sys/class/power_supply/usb/online", 0)                    # no current_now: not a source
    _w(sysfs, "sys/class/powercap/intel-rapl:0/energy_uj", 999_000_000)
    _w(sysfs, "sys/class/powercap/intel-rapl:0/max_energy_range_uj", 1_000_000_000)
    _w(sysfs, "sys/class/powercap/intel-rapl:0:0/energy_uj", 5)           # a sub-zone: not counted twice
    _w(sysfs, "sys/class/thermal/thermal_zone0/temp", 41500)
    _w(sysfs, "sys/class/thermal/thermal_zone0/type", "cpu-0")
    _w(sysfs, "sys/class/thermal/thermal_zone1/temp", "garbage")
    _w(sysfs, "sys/class/thermal/thermal_zone1/type", "gpu")
    clock = Clock()
    tel = Telemetry(sysfs, clock=clock)
    for _ in range(10):
        clock.t += 1.0
        tel.tick()
    _w(sysfs, "sys/class/thermal/thermal_zone0/temp", 39000)
    _w(sysfs, "sys/class/powercap/intel-rapl:0/energy_uj", 4_000_000)    # wrapped: 1 J + 4 J
    ev = tel.epoch(1)
    assert ev.epoch == 1 and abs(ev.seconds - 10) < 1e-9
    assert abs(ev.battery_j - 20.0) < 1e-6 and abs(ev.battery_w - 2.0) < 1e-6
    assert abs(ev.rapl_j - 5.0) < 1e-6
    assert ev.temps == {"cpu-0": 39.0, "gpu": None} and ev.temp_max == 41.5
    back = parse_event(ev.to_json())
    assert back.temps == ev.temps and back.battery_j == ev.battery_j
    clock.t += 2.0                                  # the next epoch starts from zero
    ev2 = tel.epoch(2)
    assert abs(ev2.battery_j - 4.0) < 1e-6 and ev2.rapl_j == 0.0


def test_no_sensors_are_null(tmp_path, monkeypatch):
    monkeypatch.setenv("THOMAS_SYSFS_ROOT", str(tmp_path / "nothing"))
    tel = Telemetry()
    tel.tick()
    ev = tel.epoch(1)
    d = json.loads(ev.to_json())
    assert d["battery_j"] is None and d["battery_w"] is None and d["rapl_j"] is None
    assert d["temps"] == {} and d["temp_max"] is None


def test_unreadable_energy_counter_is_null(tmp_path):
    _w(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", 10)
    tel = Telemetry(tmp_path)
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").unlink()   # vanished (or root-only)
    assert tel.epoch(1).rapl_j is None


def test_training_run_sends_telemetry_after_each_epoch(tmp_path, monkeypatch):
    from train_helpers import events, make_root, run_entry

    _w(tmp_path / "sysfs", "sys/class/thermal/thermal_zone0/temp", 30000)
    _w(tmp_path / "sysfs", "sys/class/thermal/thermal_zone0/type", "soc")
    monkeypatch.setenv("THOMAS_SYSFS_ROOT", str(tmp_path / "sysfs"))
    job = dict(make_root(tmp_path, limit=60), epochs=2, batch=16, backend="numpy")
    p = run_entry(job, tmp_path / "job.json")
    assert p.returncode == 0, p.stderr
    evs = events(p.stdout)
    kinds = [e["ev"] for e in evs]
    tel = [e for e in evs if e["ev"] == "telemetry"]
    assert [e["epoch"] for e in tel] == [1, 2]
    for i, k in enumerate(kinds):
        if k == "epoch":
            assert kinds[i + 1] == "telemetry"
    assert tel[0]["temps"] == {"soc": 30.0} and tel[0]["battery_j"] is None and tel[0]["rapl_j"] is None


def test_finetune_view_prints_telemetry_lines(capsys):
    from thomas_cli.views import RunView

    v = RunView(as_json=False)
    v.tty = False
    v(parse_event({"ev": "telemetry", "epoch": 2, "seconds": 3.0, "battery_j": 12.5, "battery_w": 4.2, "rapl_j": None,
       "temps": {"cpu": 41.0}, "temp_max": 44.0}))
    v(parse_event({"ev": "telemetry", "epoch": 3, "seconds": 3.0, "battery_j": None, "battery_w": None, "rapl_j": None,
       "temps": {}, "temp_max": None}))                     # nothing measured: nothing printed
    err = capsys.readouterr().err
    assert "epoch 2 energy: 12.5 J battery, max 44 °C" in err and "epoch 3" not in err
