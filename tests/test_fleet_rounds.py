"""Fleet rounds through Flower's runtime on real virtual phones (daemon and shell mode) and the local
device: bit-identical to plain `thomas finetune`, FedAvg of identical devices = one device, a device
dropping out mid-round and rejoining, --min-devices stopping the fleet, --resume after the laptop's
process is SIGKILLed between rounds. Each simulation costs 20-40 s on 2 cores: few runs, many checks."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from devicekit import thomas
from fleetkit import RUN, FleetEnv, events, image_set, phones, same_weights, weights

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ZOO = ["--classes", "3", "--size", "32", "--width", "0.35"]


def runs_of(home: Path) -> set[str]:
    d = home / "runs"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def plain_finetune(fl: FleetEnv, model: str, *args: str) -> Path:
    before = runs_of(fl.home)
    thomas(fl.target(None), "finetune", model, "--data", "digits", *RUN, *args)
    (new,) = runs_of(fl.home) - before
    return fl.home / "runs" / new


def wait_log(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < deadline, f"'{text}' never appeared in {path}"
        time.sleep(0.05)


def test_rounds_equal_plain_finetune_and_resume_after_sigkill(tmp_path, monkeypatch):
    with contextlib.ExitStack() as stack:
        (vd,) = phones(stack, tmp_path, 1)
        fl = FleetEnv(tmp_path, [vd], monkeypatch, shell=vd)
        stack.callback(fl.stop)
        thomas(fl.target(None), "push-model", "mobilenet_v2", *ZOO, "--name", "mnv2")
        data = image_set(tmp_path / "digits")
        fl.push(None, data)
        fl.push(vd.serial, data)                  # identical data on both devices
        job = ["--layers", "2", "--local-epochs", "2", *RUN]

        # 1. one device x one round = a plain finetune of the same job, bit for bit
        plain = plain_finetune(fl, "mnv2", "--layers", "2", "--epochs", "2")
        evs, _ = fl.run("mnv2", "--data", "digits", "--devices", "local", "--rounds", "1", *job, "--json")
        assert [e["ev"] for e in evs] == ["start", "round_start", "device_done", "round_done", "done"]
        one = fl.home / "runs" / evs[0]["run"]
        assert same_weights(weights(plain), weights(one)) == []
        dev_run = json.loads((fl.home / "runs" / evs[2]["run"] / "run.json").read_text())
        assert dev_run["fleet"] == {"run": one.name, "round": 1, "device": 0} and dev_run["status"] == "done"
        doc = json.loads((one / "fleet.json").read_text())
        assert doc["status"] == "done" and doc["rounds_done"] == 1 and (one / "rounds" / "round-1.npz").is_file()
        assert json.loads((one / "run.json").read_text())["kind"] == "fleet"

        # 2. FedAvg of two devices holding identical data = one device: round 2 of the fleet equals a plain
        #    finetune (seed + 1) of the one-device round 1
        plain2 = plain_finetune(fl, str(one / "final"), "--layers", "2", "--epochs", "2", "--seed", "1")
        fleet_args = ["mnv2", "--data", "digits", "--devices", f"local,{vd.serial}", "--rounds", "2", *job]
        evs2, _ = fl.run(*fleet_args, "--json")
        two = fl.home / "runs" / evs2[0]["run"]
        dones = [e for e in evs2 if e["ev"] == "device_done"]
        assert sorted((e["round"], e["device"]) for e in dones) == [(1, 0), (1, 1), (2, 0), (2, 1)], \
            [{k: e.get(k) for k in ("ev", "round", "device", "devices", "done", "failed")} for e in evs2]
        assert same_weights(weights(plain2), weights(two)) == []

        # 4. SIGKILL the laptop's whole process (CLI, Flower, Ray) once round 1 is recorded; --resume ends
        #    with the same weights as the uninterrupted run
        p = fl.fleet(*fleet_args, "--json", "--keep", "1")
        run_id = None
        for ev in events(p):
            run_id = run_id or ev.get("run")
            if ev["ev"] == "round_done":
                os.killpg(p.pid, signal.SIGKILL)
                break
        p.wait(30)
        killed = fl.home / "runs" / run_id
        doc = json.loads((killed / "fleet.json").read_text())
        assert doc["status"] == "running" and doc["rounds_done"] == 1 and not (killed / "final").exists()
        evs3, _ = fl.run("--resume", run_id, "--json")
        assert [e["round"] for e in evs3 if e["ev"] == "round_done"] == [2]
        assert same_weights(weights(two), weights(killed)) == []
        assert sorted(p.name for p in (killed / "rounds").iterdir()) == ["round-2.npz"]   # --keep 1
        r = thomas(fl.target(None), "runs", "list", "--json")
        rows = {row["id"]: row for row in json.loads(r.stdout)}
        assert rows[run_id]["kind"] == "fleet" and rows[run_id]["status"] == "done"
        assert fl.run("--resume", run_id, expect=1)[1].strip().endswith("nothing to resume")


def test_dropout_mid_round_rejoins_three_phones_and_local(tmp_path, monkeypatch):
    """Phones 0 and 1 in daemon mode, phone 2 in shell mode, plus the local device. Phone 1's daemon
    is killed as round 1 starts: the round succeeds without it (--min-devices 1); the daemon is restarted
    once its failure is logged and the phone rejoins (round 2 when the restart wins the race with the
    round's start, which a loaded machine may not guarantee; round 3 in any case)."""
    with contextlib.ExitStack() as stack:
        vds = phones(stack, tmp_path, 3)
        fl = FleetEnv(tmp_path, vds, monkeypatch, shell=vds[2])
        stack.callback(fl.stop)
        daemons = [fl.daemon(vds[0]), fl.daemon(vds[1])]
        thomas(fl.target(None), "push-model", "mobilenet_v2", *ZOO, "--name", "mnv2")
        for i, serial in enumerate([None] + [vd.serial for vd in vds]):
            fl.push(serial, image_set(tmp_path / f"digits{i}", per_class=12 + 2 * i))
        p = fl.fleet("mnv2", "--data", "digits", "--devices", ",".join(["local"] + [vd.serial for vd in vds]),
                     "--rounds", "3", "--local-epochs", "1", "--min-devices", "1", *RUN, "--json")
        got = []
        for ev in events(p):
            got.append(ev)
            if ev["ev"] == "round_start" and ev["round"] == 1:
                daemons[1].kill()
                wait_log(fl.home / "runs" / got[0]["run"] / "fleet.log", "[device 2] round 1: failed", 300)
                fl.restart(daemons[1])
        assert p.wait(60) == 0, p.stderr.read()
        rounds = {e["round"]: e for e in got if e["ev"] == "round_done"}
        assert rounds[1]["done"] == 3 and [f["device"] for f in rounds[1]["failed"]] == [2]
        assert rounds[3]["done"] == 4 and rounds[3]["failed"] == []
        assert {e["device"] for e in got if e["ev"] == "device_failed"} == {2}
        assert {e["device"] for e in got if e["ev"] == "device_done" and e["round"] == 3} == {0, 1, 2, 3}
        doc = json.loads((fl.home / "runs" / got[0]["run"] / "fleet.json").read_text())
        assert [d["describe"]["transport"] for d in doc["devices"]] == ["local", "daemon", "daemon", "adb"]
        assert (fl.home / "runs" / got[0]["run"] / "final" / "weights.npz").is_file()


def test_min_devices_stops_the_fleet_then_resume(tmp_path, monkeypatch):
    with contextlib.ExitStack() as stack:
        (vd,) = phones(stack, tmp_path, 1)
        fl = FleetEnv(tmp_path, [vd], monkeypatch)
        stack.callback(fl.stop)
        d = fl.daemon(vd)
        thomas(fl.target(None), "push-model", "mobilenet_v2", *ZOO, "--name", "mnv2")
        fl.push(None, image_set(tmp_path / "a"))
        fl.push(vd.serial, image_set(tmp_path / "b", per_class=10))
        p = fl.fleet("mnv2", "--data", "digits", "--devices", f"local,{vd.serial}", "--rounds", "2",
                     "--min-devices", "2", *RUN)
        wait_log_dir = fl.home / "runs"
        deadline = time.monotonic() + 120
        while not list(wait_log_dir.glob("*/fleet.log")):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        d.kill()
        out, err = p.communicate(timeout=300)
        assert p.returncode == 1, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "the fleet stopped: round 1: 1 of 2 devices replied, --min-devices is 2" in lines[0]
        assert "--resume" in lines[0] and "Traceback" not in out + err
        (run,) = wait_log_dir.glob("*/fleet.json")
        doc = json.loads(run.read_text())
        assert doc["status"] == "stopped" and doc["rounds_done"] == 0
        fl.restart(d)
        evs, _ = fl.run("--resume", doc["id"], "--json")
        assert [e["round"] for e in evs if e["ev"] == "round_done"] == [1, 2]
        assert json.loads(run.read_text())["status"] == "done"


def test_fedadam_state_survives_resume_and_central_eval(tmp_path, monkeypatch):
    """FedAdam's moments are saved with each round: killed after round 1 and resumed, it ends with the
    uninterrupted run's weights (restarting the moments would not). --central-data evaluates the global
    model here each round; runs show and report draw the rounds."""
    import numpy as np

    from devicekit import digits

    with contextlib.ExitStack() as stack:
        (vd,) = phones(stack, tmp_path, 1)
        fl = FleetEnv(tmp_path, [vd], monkeypatch, shell=vd)
        stack.callback(fl.stop)
        thomas(fl.target(None), "push-model", "mobilenet_v2", *ZOO, "--name", "mnv2")
        fl.push(None, image_set(tmp_path / "a", per_class=12))
        fl.push(vd.serial, image_set(tmp_path / "b", per_class=16))
        x, y = digits(6, 3)
        # the phones' ImageFolder classes are sorted by name: one, two, zero (digit d is class (d - 1) % 3)
        np.savez(tmp_path / "holdout.npz", x=x, y=(y - 1) % 3, classes=np.array(["one", "two", "zero"]))
        args = ["mnv2", "--data", "digits", "--devices", f"local,{vd.serial}", "--rounds", "3", "--strategy",
                "fedadam", "--local-epochs", "1", *RUN, "--central-data", str(tmp_path / "holdout.npz"), "--json"]
        evs, _ = fl.run(*args)
        whole = fl.home / "runs" / evs[0]["run"]
        central = [e["central_acc"] for e in evs if e["ev"] == "round_done"]
        assert len(central) == 3 and all(0 <= a <= 1 for a in central)
        assert "acc" in json.loads((whole / "fleet.json").read_text())["central_start"]
        with np.load(whole / "rounds" / "round-3.npz") as z:
            assert any(k.startswith("state/m_t/") for k in z.files) and any(k.startswith("state/v_t/") for k in z.files)

        p = fl.fleet(*args)
        run_id = None
        for ev in events(p):
            run_id = run_id or ev.get("run")
            if ev["ev"] == "round_done" and ev["round"] == 2:
                os.killpg(p.pid, signal.SIGKILL)
                break
        p.wait(30)
        evs2, _ = fl.run("--resume", run_id, "--json")
        assert [e["round"] for e in evs2 if e["ev"] == "round_done"] == [3]
        assert same_weights(weights(whole), weights(fl.home / "runs" / run_id)) == []

        shown = thomas(fl.target(None), "runs", "show", run_id).stdout
        assert "device 0" in shown and "device 1" in shown and "fleet fedadam" in shown
        doc = json.loads(thomas(fl.target(None), "runs", "show", run_id, "--json").stdout)["fleet"]
        assert [e["round"] for e in doc["history"]] == [1, 2, 3] and doc["history"][-1]["central_acc"] is not None
        thomas(fl.target(None), "report", run_id, "-o", str(tmp_path / "fleet.png"))
        assert (tmp_path / "fleet.png").stat().st_size > 10_000


def test_fraction_asks_some_devices_each_round(tmp_path, monkeypatch):
    """--fraction 0.5 of two devices: one device a round (Flower samples it; seeded by the round);
    a Ctrl-C stops the fleet before its next round and --resume finishes it; FedProx's mu reaches the jobs."""
    with contextlib.ExitStack() as stack:
        (vd,) = phones(stack, tmp_path, 1)
        fl = FleetEnv(tmp_path, [vd], monkeypatch, shell=vd)
        stack.callback(fl.stop)
        thomas(fl.target(None), "push-model", "mobilenet_v2", *ZOO, "--name", "mnv2")
        fl.push(None, image_set(tmp_path / "a", per_class=8))
        fl.push(vd.serial, image_set(tmp_path / "b", per_class=8))
        # Ctrl-C once: the fleet stops before its next round (one line), --resume finishes it
        p = fl.fleet("mnv2", "--data", "digits", "--devices", f"local,{vd.serial}", "--rounds", "3",
                     "--fraction", "0.5", "--strategy", "fedprox", "--proximal-mu", "0.1", *RUN, "--json")
        evs = []
        for ev in events(p):
            evs.append(ev)
            if ev["ev"] == "round_done" and ev["round"] == 1:
                p.send_signal(signal.SIGINT)
        assert p.wait(120) == 1
        err = p.stderr.read().strip().splitlines()
        assert len(err) == 1 and "interrupted on this computer (Ctrl-C) after round" in err[0], err
        assert any(e["ev"] == "note" and "Ctrl-C" in e["message"] for e in evs)
        evs += fl.run("--resume", evs[0]["run"], "--json")[0]
        starts = [e["devices"] for e in evs if e["ev"] == "round_start"]
        done = [(e["round"], e["done"], e["devices"]) for e in evs if e["ev"] == "round_done"]
        assert starts == [1, 1, 1] and done == [(1, 1, 1), (2, 1, 1), (3, 1, 1)]
        # FedProx: Flower's proximal-mu reaches every device run as the agent's prox_mu
        for e in evs:
            if e["ev"] == "device_done":
                assert json.loads((fl.home / "runs" / e["run"] / "job.json").read_text())["prox_mu"] == 0.1
