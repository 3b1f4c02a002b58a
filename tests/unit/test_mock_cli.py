"""`apnsd mock` options: Apple's reasons by name, bursts, GOAWAY reasons, stalls and the environment."""

from __future__ import annotations

import pytest

from apnsd.cli.main import _parser


def mock_args(*argv: str):
    """The parsed `apnsd mock` command line."""
    return _parser().parse_args(["mock", *argv])


def test_reasons_may_be_given_by_name_alone():
    """A prefix rule or a burst naming only Apple's reason takes the status from Apple's table."""
    args = mock_args(
        "--fail-prefix",
        "ab=InvalidProviderToken",
        "--fail-prefix",
        "cd=410:Unregistered",
        "--burst",
        "TooManyProviderTokenUpdates:3",
        "--burst-after",
        "2",
    )
    assert (
        [("ab", 403, "InvalidProviderToken"), ("cd", 410, "Unregistered")],
        (429, "TooManyProviderTokenUpdates", 3),
        2,
    ) == (
        args.fail_prefix,
        args.burst,
        args.burst_after,
    )


def test_goaway_reason_stall_and_environment_are_options():
    """--goaway-reason, --stall-after, --environment and --idle-timeout reach the parsed options."""
    args = mock_args(
        *("--goaway-after", "5", "--goaway-reason", "IdleTimeout", "--stall-after", "7"),
        *("--environment", "sandbox", "--idle-timeout", "30"),
    )
    assert ("IdleTimeout", 7, "sandbox", 30.0) == (
        args.goaway_reason,
        args.stall_after,
        args.environment,
        args.idle_timeout,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--fail-prefix", "zz=410"],
        ["--fail-prefix", "ab=NoSuchReason"],
        ["--burst", "503:ServiceUnavailable:many"],
        ["--goaway-reason", "Bye"],
        ["--port", "70000"],
        ["--channels-port", "-1"],
    ],
)
def test_malformed_fault_options_exit_2_with_a_message(argv, capsys):
    """A malformed fault option is an argparse error (exit 2, a message), never a traceback."""
    with pytest.raises(SystemExit) as exit_:
        mock_args(*argv)
    assert (2, True) == (exit_.value.code, "apnsd mock: error:" in capsys.readouterr().err)
