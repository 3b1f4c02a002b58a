"""The arithmetic of the more-cores benchmark: the nothing-twice check, paired ratios, the summary row."""

from __future__ import annotations

from typing import Any

from benchmarks import procs


def run(steady: float, rate: float, ok: bool = True, **extra: Any) -> dict[str, Any]:
    """One drain as Bench._drain records it (only the fields the summary reads)."""
    return {
        "ok": ok,
        "jobs": 600_000,
        "steady_rate": steady,
        "rate": rate,
        "cpu_per_10k": 0.05,
        "cpu_seconds": 3.0,
        "redis_cpu_seconds": 0.6,
        "sink_cpu_seconds": 0.1,
        "handshakes": 2,
        "sink_frames": 600_000,
        **extra,
    }


def test_duplicate_error_is_empty_when_frames_and_delivered_both_equal_the_jobs() -> None:
    """A clean run passes the check."""
    assert "" == procs.duplicate_error(600_000, 600_000, 600_000)


def test_duplicate_error_names_a_frame_sent_twice_and_a_missing_outcome() -> None:
    """One frame too many at the sink and one delivered too few are both reported."""
    assert (
        "the sink counted 600,001 frames for 600,000 jobs; the daemons recorded 599,999 delivered for 600,000 jobs"
        == procs.duplicate_error(600_000, 600_001, 599_999)
    )


def test_paired_ratios_divide_within_each_repeat_and_skip_failed_runs() -> None:
    """Repeat 2's 2-process run failed: only repeats 1 and 3 give a ratio."""
    ones = [run(200_000, 170_000), run(210_000, 175_000), run(205_000, 172_000)]
    twos = [run(340_000, 255_000), run(0, 0, ok=False), run(328_000, 258_000)]

    assert [1.7, 1.6] == [round(x, 3) for x in procs.paired_ratios(ones, twos, "steady_rate")]


def test_summary_uses_the_steady_ratio_for_the_target_and_reports_end_to_end_beside_it() -> None:
    """x_one_process is the median steady ratio; the end-to-end ratio and the target's key are reported too."""
    ones = [run(200_000, 170_000), run(200_000, 170_000), run(200_000, 170_000)]
    twos = [run(320_000, 240_000), run(340_000, 255_000), run(360_000, 260_000)]

    row = procs.summarize(ones, twos)

    assert (1.7, 1.5, "steady_rate", 340_000.0, 0) == (
        row["x_one_process"],
        row["x_one_process_end_to_end"],
        row["target_key"],
        row["value"],
        row["failed_runs"],
    )


def test_summary_counts_frames_beyond_one_per_job_over_every_run() -> None:
    """A run whose sink saw two extra frames shows as 2 extra frames, and a failed run is counted."""
    ones = [run(200_000, 170_000)]
    twos = [run(300_000, 240_000, ok=False, sink_frames=600_002)]

    row = procs.summarize(ones, twos)

    assert (2, 1, None) == (row["extra_frames"], row["failed_runs"], row["x_one_process"])


def test_sink_bound_reports_h2load_scaling_and_nginx_cpu_per_daemon_cpu() -> None:
    """h2load 89.3k with 2 connections against 89.5k with one, and nginx 1.73 s beside the daemons' 2.03 s."""
    got = procs.sink_bound(
        [{"rate": 89_500.0}], [{"rate": 89_300.0}], [{"ok": True, "sink_cpu_seconds": 1.73, "cpu_seconds": 2.03}]
    )

    assert (1.0, 0.85) == (round(got["h2load_c2_over_c1"], 2), round(got["nginx_cpu_per_daemon_cpu"], 2))
