"""Run ids sort in creation order: `thomas runs list` lists them sorted, and "the last run" (the
README walkthrough's RUN) is the greatest id. Two runs started in one second used to sort by their
random suffix."""
from __future__ import annotations

import re
import time

from thomas_cli import store


def test_ids_started_within_one_second_sort_in_creation_order():
    ids = []
    for _ in range(12):
        ids.append(store.new_run_id())
        time.sleep(0.0015)
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert len({i[:15] for i in ids}) <= 2            # (they were made within one or two seconds)


def test_an_id_is_a_valid_run_directory_name():
    rid = store.new_run_id()
    assert re.fullmatch(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{4}", rid), rid
    assert store.run_dir(rid).name == rid
