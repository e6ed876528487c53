"""`thomas demo` end to end on the local device, with the recipes cut to one epoch on a subset."""
import numpy as np
import pytest

pytest.importorskip("sklearn")


def test_demo_runs_every_stage_through_the_cli(monkeypatch, tmp_path, capsys):
    from thomas_cli import demo, runs as run_records

    full = demo.digits_dataset

    def subset(size=demo.SIZE):
        x, y = full(size)
        keep = np.concatenate([np.flatnonzero(y == d)[:30] for d in range(10)])
        return x[keep], y[keep]

    monkeypatch.setattr(demo, "digits_dataset", subset)
    monkeypatch.setattr(demo, "RECIPES", {k: dict(v, epochs=1, batch=16) for k, v in demo.RECIPES.items()})
    results = demo.run_demo(backends=("numpy",))
    assert [r.stage for r in results] == ["scratch", "last", "N=3", "all"]
    assert all(r.val_acc is not None and 0 <= r.val_acc <= 1 for r in results)
    assert all(len(r.epoch_s) == 1 and r.peak > 0 for r in results)
    assert results[1].cache == "miss"                      # last layer: frozen features cached once
    runs = {rec["id"]: rec for rec in run_records.list_runs()}
    assert len(runs) == 4 and all(rec["status"] == "done" for rec in runs.values())
    fine = [rec for rec in runs.values() if rec["stage"] != "scratch"]
    assert all(rec["job"]["model"] == f"runs/{results[0].final}/final" for rec in fine)
    shown = capsys.readouterr().out
    assert "training stages" in shown and "scratch" in shown and "N=3" in shown
