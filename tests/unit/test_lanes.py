"""Lanes and throttles in the configuration, and the starvation guard's choice of the first lane to look at."""

from __future__ import annotations

import pytest

from apnsd.config import load_config
from apnsd.worker.lanes import LanePlan, LowerBatch, next_window
from tests.support.configs import config_error, write


def test_lanes_are_lists_beside_the_queue_whose_default_lane_is_the_queue_itself():
    """lanes = urgent, default, bulk: three keys in that order, the default one unchanged."""
    config = load_config(None, {"APNSD_APP_DEFAULT_LANES": "urgent,default,bulk"})

    assert ["apnsd:queue:urgent", "apnsd:queue", "apnsd:queue:bulk"] == config.lanes("apnsd:queue")
    assert ["apnsd:queue:urgent", "apnsd:queue", "apnsd:queue:bulk"] == config.all_lane_keys()


def test_an_app_without_lanes_has_one_lane_its_queue():
    """No lanes: the queue is its only list, exactly as before lanes existed."""
    config = load_config(None, {})

    assert ["apnsd:queue"] == config.lanes("apnsd:queue")
    assert LanePlan.for_queue(config, "apnsd:queue").simple


def test_in_cluster_mode_every_lane_keeps_its_queues_hash_tag(tmp_path):
    """Cluster: the lanes of a shard or of an app's own queue carry the same hash tag, so one script takes them."""
    path = write(
        tmp_path,
        """
[redis]
cluster = true
shards = 2
[apps.default]
lanes = ["urgent", "default"]
[apps.shop]
queue = "{shop}:queue"
lanes = ["default", "bulk"]
""",
    )
    config = load_config(path, {})

    assert ["apnsd:{0}:queue:urgent", "apnsd:{0}:queue"] == config.lanes("apnsd:{0}:queue")
    assert ["{shop}:queue", "{shop}:queue:bulk"] == config.lanes("{shop}:queue")


@pytest.mark.parametrize(
    ("lanes", "problem"),
    [
        ('["urgent", "bulk"]', 'must include "default"'),
        ('["urgent", "default", "urgent"]', "names a lane twice"),
        ('["Urgent", "default"]', "is not a lane name"),
        ('["scheduled", "default"]', "is not a lane name"),
        ('["", "default"]', "is not a lane name"),
        ('["default", "a", "b", "c", "d", "e", "f", "g", "h"]', "at most 8 lanes"),
    ],
)
def test_bad_lanes_name_the_key(tmp_path, lanes, problem):
    """Lanes without the default lane, repeated, malformed, reserved or too many fail naming apps.<name>.lanes."""
    err = config_error(write(tmp_path, f"[apps.default]\nlanes = {lanes}\n"))

    assert "apps.default.lanes" == err.key
    assert problem in err.problem


def test_apps_sharing_a_queue_must_declare_the_same_lanes(tmp_path):
    """Two apps on the shared queue with different lanes: refused, since one loop takes for both."""
    err = config_error(write(tmp_path, '[apps.default]\nlanes = ["urgent", "default"]\n[apps.other]\n'))

    assert err.key in ("apps.default.lanes", "apps.other.lanes")
    assert "must declare the same lanes" in err.problem


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ("max_rate = -1", "apps.default.max_rate", "between 0 (unlimited) and 10000000"),
        ("max_rate = nan", "apps.default.max_rate", "between 0 (unlimited) and 10000000"),
        ("max_rate = inf", "apps.default.max_rate", "between 0 (unlimited) and 10000000"),
        ("lane_max_rate = {bulk = 10}", "apps.default.lane_max_rate", "names 'bulk', which is not in lanes"),
        ('lanes = ["default", "bulk"]\nlane_max_rate = {bulk = -3}', "apps.default.lane_max_rate.bulk", "between"),
        ("lower_lane_every = 1", "apps.default.lower_lane_every", "between 2 and 1000"),
        ("lane_window = 0", "apps.default.lane_window", "between 1 and 100000"),
    ],
)
def test_bad_throttles_and_lane_settings_name_the_key(tmp_path, table, key, problem):
    """Negative, NaN or infinite rates, a rate for an undeclared lane and out-of-range settings are refused."""
    err = config_error(write(tmp_path, f"[apps.default]\n{table}\n"))

    assert key == err.key
    assert problem in err.problem


def test_a_throttle_needs_a_queue_of_its_own(tmp_path):
    """A throttled app sharing its queue with another app is refused: the bucket is the queue's."""
    err = config_error(write(tmp_path, "[apps.default]\nmax_rate = 100\n[apps.other]\n"))

    assert "apps.default.max_rate" == err.key
    assert "only reader of its queue" in err.problem


def test_a_sharded_apps_rate_is_shared_out_among_its_shards(tmp_path):
    """max_rate 900 over 3 shards: each shard's bucket gets 300/s; lane rates likewise."""
    path = write(
        tmp_path,
        '[redis]\nshards = 3\n[apps.default]\nlanes = ["default", "bulk"]\n'
        "max_rate = 900\nlane_max_rate = {bulk = 300}\n",
    )
    plan = LanePlan.for_queue(load_config(path, {}), "apnsd:{1}:queue")

    assert (300.0, [0.0, 100.0]) == plan.rates
    assert not plan.simple


def test_lane_poll_is_bounded():
    """worker.lane_poll outside 5 ms … 1 s is refused."""
    assert "worker.lane_poll" == config_error(None, {"APNSD_WORKER_LANE_POLL": "0"}).key


@pytest.mark.parametrize(
    ("every", "lanes", "firsts"),
    [
        (10, 3, {1: 0, 9: 0, 10: 1, 20: 1, 90: 1, 100: 2, 200: 2, 101: 0}),
        (2, 2, {1: 0, 2: 1, 3: 0, 4: 1}),
        (2, 3, {1: 0, 2: 1, 4: 2, 6: 1, 8: 2}),
        (10, 1, {10: 0, 100: 0}),
    ],
)
def test_every_nth_take_looks_one_lane_lower_first(every, lanes, firsts):
    """The n-th take starts one lane lower every `every` takes, two lanes lower every `every`² takes."""
    plan = LanePlan("q", tuple(f"q:{i}" for i in range(lanes)), lower_lane_every=every)

    assert firsts == {n: plan.first_lane(n) for n in firsts}


def test_the_guard_gives_each_lower_lane_its_share():
    """Over 1,000 takes with lower_lane_every = 10 and three lanes: 900, 90 and 10 start at each lane."""
    plan = LanePlan("q", ("q:u", "q", "q:b"), lower_lane_every=10)

    starts = [plan.first_lane(n) for n in range(1, 1001)]

    assert [900, 90, 10] == [starts.count(lane) for lane in range(3)]


def test_a_lane_list_cannot_be_another_queue(tmp_path):
    """A lane "sandbox" of the shared queue would be the sandbox app's own queue apnsd:queue:sandbox: refused."""
    path = write(
        tmp_path,
        '[apps.default]\nlanes = ["default", "sandbox"]\n[apps.sandbox]\nqueue = "apnsd:queue:sandbox"\n',
    )

    err = config_error(path)

    assert "apps.default.lanes" == err.key
    assert "apnsd:queue:sandbox is another queue's key" in err.problem


@pytest.mark.parametrize(
    ("window", "busy", "waiting", "expected"),
    [
        (100.0, 0.95, True, 70.0),  # saturated loop: shrink
        (12.0, 1.0, True, 10.0),  # never below WINDOW_MIN
        (100.0, 0.5, True, 126.0),  # the loop waits and work waits: grow
        (900.0, 0.1, True, 1000.0),  # never above lane_window
        (100.0, 0.5, False, 100.0),  # nothing waiting: no reason to grow
        (100.0, 0.8, True, 100.0),  # between the marks: hold
    ],
)
def test_the_lower_lane_window_follows_how_busy_the_loop_is(window, busy, waiting, expected):
    """Shrinks x0.7 above 90 % busy (not below 10), grows x1.25+1 below 70 % while work waits (up to the max)."""
    assert expected == pytest.approx(next_window(window, busy, waiting, 1000))


def _lower_batch(count: int = 1000) -> LowerBatch:
    """The lower-lane take size of a three-lane queue on one connection (default lane_window) and ``count`` batches."""
    config = load_config(None, {"APNSD_APP_DEFAULT_LANES": "urgent,default,bulk"})
    return LowerBatch(LanePlan.for_queue(config, "apnsd:queue"), count)


def test_lower_lanes_are_taken_in_whole_batches_while_the_first_lane_is_quiet():
    """No take from the first lane yet: a lower-lane take moves batch_size jobs (a campaign alone drains at full
    speed)."""
    lower = _lower_batch()

    assert [1000, 1000] == [lower.size(0.0), lower.size(1000.0)]


def test_lower_lanes_are_taken_small_within_a_second_of_a_first_lane_take():
    """A first-lane take at t=10: 50 until t=11, then whole batches again."""
    lower = _lower_batch()

    lower.taken(0, 10.0)

    assert [50, 50, 1000, 1000] == [lower.size(t) for t in (10.0, 10.999, 11.0, 30.0)]


def test_only_a_take_from_the_first_lane_makes_lower_takes_small():
    """Takes from the default and bulk lanes (indexes 1 and 2) leave the size whole."""
    lower = _lower_batch()

    lower.taken(1, 5.0)
    lower.taken(2, 5.0)

    assert 1000 == lower.size(5.0)


def test_each_first_lane_take_extends_the_small_spell():
    """Urgent takes at t=0 and t=0.75 keep lower takes small until t=1.75."""
    lower = _lower_batch()

    lower.taken(0, 0.0)
    lower.taken(0, 0.75)

    assert [50, 1000] == [lower.size(1.5), lower.size(1.75)]


def test_the_lower_take_never_exceeds_batch_size():
    """batch_size 30: the small size too is 30."""
    lower = _lower_batch(30)

    lower.taken(0, 0.0)

    assert [30, 30] == [lower.size(0.5), lower.size(5.0)]


def test_a_queue_without_lanes_takes_whole_batches_whatever_the_first_lane_does():
    """One lane: no lower-lane cap, a take moves batch_size jobs."""
    lower = LowerBatch(LanePlan.for_queue(load_config(None, {}), "apnsd:queue"), 1000)

    lower.taken(0, 0.0)

    assert 1000 == lower.size(0.1)
