"""A PNG of the round-trip figure: rate against connections, one panel per round trip, with the bound drawn in.

    .venv/bin/python -m benchmarks.chart [benchmarks/results/latest.json] [-o out.png]

matplotlib is an optional extra (`pip install -e '.[bench]'`); without it the benchmark still writes its JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def have_matplotlib() -> bool:
    """True when matplotlib can be imported (the `bench` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(report: dict[str, Any], path: str) -> str:
    """Write the chart of report["rtt_summary"] to path; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rtt_summary"]
    delays = sorted({r["delay_ms"] for r in rows})
    fig, axes = plt.subplots(1, len(delays), figsize=(4.2 * len(delays), 4.2), squeeze=False)
    for ax, delay in zip(axes[0], delays, strict=True):
        rs = sorted((r for r in rows if r["delay_ms"] == delay), key=lambda r: r["connections"])
        conns = [r["connections"] for r in rs]
        ax.plot(conns, [r["bound"] for r in rs], "k--", label="bound: connections × 1,000 / round trip")
        for key, style, label in (
            ("apnsd", "o-", "apnsd (from Redis)"),
            ("h2load", "s-", "h2load (same sink)"),
            ("node_apn", "^-", "@parse/node-apn"),
        ):
            pts = [(r["connections"], r[key]) for r in rs if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.set_title(f"round trip {delay} ms")
        ax.set_xlabel("TLS connections")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("notifications / s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    machine = report.get("machine", {})
    load = machine.get("loadavg_start", ["?"])[0]
    fig.suptitle(
        f"apnsd against nginx answering after a delay — {report.get('started_utc', '')}, "
        f"{machine.get('nproc', '?')} cores, load average {load} at start",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    p.add_argument("-o", "--output", default=None, help="PNG path (default: beside the results file)")
    a = p.parse_args(argv)
    if not have_matplotlib():
        print("benchmarks.chart: matplotlib is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    report = json.loads(Path(a.results).read_text())
    if not report.get("rtt_summary"):
        print(f"benchmarks.chart: {a.results} has no round-trip figure (run with --only rtt)", file=sys.stderr)
        return 1
    print(draw(report, a.output or str(Path(a.results).with_suffix(".png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
