"""The arithmetic behind the round-trip benchmark's figures: bounds, run sizes, steady rates, scaling."""

from __future__ import annotations

from benchmarks import rtt
from benchmarks.workload import DrainResult


def drain_with(progress: list[tuple[float, int]], jobs: int, last: float | None) -> DrainResult:
    """A finished drain whose resolved counts were polled at the given times."""
    res = DrainResult(jobs, 0.0, None, last, [])
    res.progress = progress
    return res


def test_bound_is_connections_times_streams_over_round_trip() -> None:
    """1,000 streams at 50 ms carry 20,000/s per connection."""
    assert 80_000 == rtt.bound(4, 0.05)


def test_jobs_for_sizes_a_run_within_limits_in_whole_thousands() -> None:
    """A run lasts about `seconds` at the bound, never below the floor or above the cap."""
    assert [30_000, 5_000, 200_000] == [
        rtt.jobs_for(10_000, 3.0, 5_000, 200_000),
        rtt.jobs_for(1_000, 3.0, 5_000, 200_000),
        rtt.jobs_for(800_000, 3.0, 5_000, 200_000),
    ]


def test_answer_rate_leaves_out_the_first_wave_so_waves_are_measured_exactly() -> None:
    """Answers arriving in waves of 1,000 every 0.1 s give 10,000/s, not the 11,250/s of jobs / (last - first)."""
    waves = [(0.0, 0)] + [(0.5 + 0.1 * k, 1000 * (k + 1)) for k in range(9)]
    res = drain_with(waves, 9000, waves[-1][0])

    assert 10_000 == round(res.answer_rate() or 0)


def test_middle_rate_is_exact_for_waves_even_when_the_first_poll_catches_part_of_one() -> None:
    """Six waves of 1,000 at 0.5 s are 2,000/s, though the first poll saw only 200 of the first wave."""
    waves = [(0.0, 0), (0.5, 200)] + [(0.5 + 0.5 * k, 1000 * (k + 1)) for k in range(1, 6)]
    res = drain_with(waves, 6000, waves[-1][0])

    assert 2_320 == round(res.answer_rate() or 0)  # the old figure: 1.16 of the bound
    assert 2_000 == round(res.middle_rate() or 0)


def test_middle_rate_leaves_out_a_late_second_connection() -> None:
    """Two connections of 6 waves each, the second starting one round trip late: 4,000/s once both run."""
    progress = [(0.0, 0)]
    for k in range(1, 8):
        done = 1000 * min(k, 6) + 1000 * min(max(k - 1, 0), 6)
        progress.append((0.5 * k, done))
    res = drain_with(progress, 12_000, progress[-1][0])

    assert 4_000 == round(res.middle_rate() or 0)


def test_middle_rate_is_none_without_two_distinct_moments() -> None:
    """All jobs resolved at one poll: no rate can be taken from the middle."""
    assert None is drain_with([(0.0, 0), (1.0, 1000)], 1000, 1.0).middle_rate()


def test_answer_rate_is_none_before_any_outcome() -> None:
    """A drain that never saw an outcome has no steady rate."""
    assert None is drain_with([(0.0, 0), (1.0, 0)], 1000, None).answer_rate()


def run_cell(delay_ms: int, conns: int, rate: float, ok: bool = True) -> dict[str, object]:
    """One measured (delay, connections) cell as rtt.measure records it."""
    bound = rtt.bound(conns, delay_ms / 1000)
    return {
        "delay_ms": delay_ms,
        "connections": conns,
        "bound": bound,
        "apnsd": {"ok": ok, "cpu_per_10k": 0.2, "seconds": 2.0, "cpu_wait_seconds": 0.5},
        "apnsd_rate": rate,
        "ratio_bound": rate / bound,
        "ratio_h2load": rate / 9000,
        "h2load": {"rate": 9000.0, "cpu_per_10k": 0.07},
    }


def test_summarize_takes_medians_and_scales_each_delay_against_its_own_one_connection_row() -> None:
    """Repeats collapse to medians, failed runs are left out and counted, and × 1 connection is per delay."""
    runs = [
        run_cell(100, 1, 8000),
        run_cell(100, 1, 9000),
        run_cell(100, 1, 1, ok=False),
        run_cell(100, 4, 34000),
        run_cell(500, 1, 1900),
        run_cell(500, 4, 7600),
    ]

    rows = rtt.summarize(runs)

    assert [(100, 1), (100, 4), (500, 1), (500, 4)] == [(r["delay_ms"], r["connections"]) for r in rows]
    assert [8500, 34000, 1900, 7600] == [r["apnsd"] for r in rows]
    assert [1, 0, 0, 0] == [r["failed_runs"] for r in rows]
    assert [1.0, 4.0, 1.0, 4.0] == [round(r["x_one"], 2) for r in rows]
    assert 0.25 == rows[0]["cpu_wait_share"]
