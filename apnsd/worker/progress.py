"""What `run --drain` shows: a progress line updated in place on a terminal, and a summary at the end."""

from __future__ import annotations

from typing import Any, TextIO

FINAL = ("delivered", "dead", "unregistered")  # outcomes that end a notification (retry and scheduled come back)
REDRAW_INTERVAL = 1.0


def _duration(seconds: float) -> str:
    """3.2s, 4m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class DrainProgress:
    """Counts outcomes since the drain started; draws one line in place when ``live`` (a terminal)."""

    def __init__(self, out: TextIO, live: bool, started: float, baseline: dict[str, float]) -> None:
        self.out = out
        self.live = live
        self.started = started
        self.baseline = baseline
        self._drawn = 0.0

    def done(self, totals: dict[str, float]) -> dict[str, int]:
        """Outcome counts since the start, from the process's running totals."""
        return {k: int(v - self.baseline.get(k, 0.0)) for k, v in sorted(totals.items()) if v > self.baseline.get(k, 0)}

    def line(self, totals: dict[str, float], remaining: int, now: float) -> str:
        """done/total, rate and ETA, e.g. ``draining: 12000/50000 (24%)  3,950/s  ETA 9.6s``."""
        counts = self.done(totals)
        finished = sum(counts.get(k, 0) for k in FINAL)
        total = finished + remaining
        elapsed = max(now - self.started, 1e-9)
        rate = finished / elapsed
        eta = _duration(remaining / rate) if rate > 0 else "?"
        pct = 100 * finished // total if total else 100
        return f"draining: {finished}/{total} ({pct}%)  {rate:,.0f}/s  ETA {eta}"

    def due(self, now: float) -> bool:
        """True when a redraw is wanted: on a terminal, a second or more after the last one."""
        return self.live and now - self._drawn >= REDRAW_INTERVAL

    def draw(self, totals: dict[str, float], remaining: int, now: float) -> None:
        """Redraw the progress line (at most once a second) when on a terminal."""
        if self.due(now):
            self._drawn = now
            self.out.write("\r\x1b[K" + self.line(totals, remaining, now))
            self.out.flush()

    def summary(self, totals: dict[str, float], now: float) -> dict[str, Any]:
        """The final numbers: counts by outcome, total, duration and rate (fields of the drain_summary event)."""
        counts = self.done(totals)
        finished = sum(counts.get(k, 0) for k in FINAL)
        duration = max(now - self.started, 0.0)
        return {
            "outcomes": counts,
            "notifications": finished,
            "duration_seconds": round(duration, 3),
            "per_second": round(finished / duration, 1) if duration > 0 else 0.0,
        }

    def finish(self, summary: dict[str, Any]) -> None:
        """On a terminal: replace the progress line with the summary line."""
        if not self.live:
            return
        parts = ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()) or "nothing to do"
        self.out.write(
            f"\r\x1b[Kdrained: {summary['notifications']} notifications in {_duration(summary['duration_seconds'])}"
            f" ({summary['per_second']:,.0f}/s): {parts}\n"
        )
        self.out.flush()
