"""`apnsd check` reads the supervisord config that runs apnsd and warns when a graceful stop would be SIGKILLed."""

from __future__ import annotations

import io
from pathlib import Path

from apnsd.cli.check import run_check
from apnsd.cli.supervisor_conf import stop_verdicts
from apnsd.config import Config, WorkerConfig

REPO = Path(__file__).resolve().parents[2]
PROGRAM = "[program:apnsd]\ncommand=apnsd run\n"


def levels(text: str, worker: WorkerConfig, tmp_path: Path) -> list[str]:
    """The verdict levels for a supervisord.conf holding ``text``."""
    return [v.level for v in stop_verdicts(worker, [_write(tmp_path, text)])]


def test_the_shipped_supervisord_conf_outlasts_the_default_stop() -> None:
    """deploy/supervisord.conf (the image's) waits longer than a stop with the default grace_period may take."""
    verdicts = stop_verdicts(WorkerConfig(), [str(REPO / "deploy" / "supervisord.conf")])

    assert ["ok"] == [v.level for v in verdicts], verdicts


def test_a_stopwaitsecs_within_the_grace_period_is_a_warning(tmp_path: Path) -> None:
    """stopwaitsecs=30 with grace_period 30: supervisord would SIGKILL a draining worker, so check warns."""
    verdicts = stop_verdicts(WorkerConfig(grace_period=30), [_write(tmp_path, PROGRAM + "stopwaitsecs=30\n")])

    assert ["warn"] == [v.level for v in verdicts]
    assert "raise stopwaitsecs above 36 or lower grace_period" in verdicts[0].message


def test_supervisords_default_stopwaitsecs_is_too_short(tmp_path: Path) -> None:
    """Without stopwaitsecs supervisord waits 10 s, less than the default 20 s grace period."""
    assert ["warn"] == levels(PROGRAM, WorkerConfig(), tmp_path)


def test_a_stop_signal_that_is_no_graceful_stop_is_a_warning(tmp_path: Path) -> None:
    """stopsignal=HUP would reload apnsd instead of stopping it (then SIGKILL): check warns; QUIT is a stop."""
    assert ["warn"] == levels(PROGRAM + "stopsignal=HUP\nstopwaitsecs=60\n", WorkerConfig(), tmp_path)
    assert ["ok"] == levels(PROGRAM + "stopsignal=QUIT\nstopwaitsecs=60\n", WorkerConfig(), tmp_path)


def test_programs_in_included_files_are_found(tmp_path: Path) -> None:
    """A [program] in a file named by [include] (Debian's conf.d layout) is judged too; other programs are not."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "apnsd.conf").write_text(
        "[program:push]\ncommand=/usr/local/bin/apnsd run --config /etc/apnsd/apnsd.toml ; comment\n"
    )
    text = "[include]\nfiles = conf.d/*.conf\n[program:web]\ncommand=nginx -g 'daemon off;'\n"

    assert ["warn"] == levels(text, WorkerConfig(), tmp_path)


def test_no_supervisord_conf_means_no_verdict(tmp_path: Path) -> None:
    """Without a supervisord config (or with an unreadable one) check says nothing about it."""
    garbled = tmp_path / "garbled.conf"
    garbled.write_bytes(b"\xff\xfe[program:apnsd\n")

    assert ([], []) == (
        stop_verdicts(WorkerConfig(), [str(tmp_path / "missing.conf")]),
        stop_verdicts(WorkerConfig(), [str(garbled)]),
    )


def test_apnsd_check_reports_the_mismatch_as_a_warning(tmp_path: Path) -> None:
    """`apnsd check` prints the stopwaitsecs warning and counts it; a warning alone still exits 0."""
    out = io.StringIO()

    code = run_check(Config(apps={}), False, out, supervisor_confs=[_write(tmp_path, PROGRAM)])

    assert (0, 1) == (code, out.getvalue().count("WARN   supervisord program apnsd")), out.getvalue()
    assert "0 error(s), 1 warning(s)" in out.getvalue()


def _write(tmp_path: Path, text: str) -> str:
    """Write a supervisord.conf and return its path."""
    path = tmp_path / "supervisord.conf"
    path.write_text(text)
    return str(path)


def test_an_include_that_is_a_fifo_is_skipped_without_waiting(tmp_path: Path) -> None:
    """An [include] pattern matching a named pipe nobody writes to is read as empty at once (config.read_file's
    rule), so `apnsd check` neither hangs nor loses the programs of the other files."""
    import os

    (tmp_path / "conf.d").mkdir()
    os.mkfifo(tmp_path / "conf.d" / "stuck.conf")
    main = tmp_path / "supervisord.conf"
    main.write_text("[include]\nfiles = conf.d/*.conf\n" + PROGRAM + "stopwaitsecs=60\n")

    assert ["ok"] == [v.level for v in stop_verdicts(WorkerConfig(), [str(main)])]
