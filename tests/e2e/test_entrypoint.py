"""The image's ENTRYPOINT and HEALTHCHECK, run as the Dockerfile runs them, against a fresh install."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apnsd.store.queue import JobQueue
from apnsd.testing.redis_server import free_port
from tests.support.dockerfile import copied_to, exec_form, instructions
from tests.support.jobs import job, push_all
from tests.support.supervised import SUPERVISORD_CONF, VENV_BIN, OutputReader, stop_by_pid
from tests.support.wait import wait_for

DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the python base image's PATH


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV lines set."""
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_user() -> tuple[int, int]:
    """The numeric uid:gid of the Dockerfile's last USER."""
    uid, _, gid = instructions("USER")[-1].partition(":")
    return int(uid), int(gid or uid)


def image_workdir() -> str:
    """The last WORKDIR, where the entrypoint starts."""
    return instructions("WORKDIR")[-1]


def _can_run(argv: list[str]) -> str:
    """'' if ``argv`` runs and exits 0, else a short reason."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]


def venv_unusable_as(bin_dir: Path, uid: int, gid: int) -> str:
    """'' if uid:gid can run that venv's interpreter and import apnsd's daemon, else why not."""
    return _can_run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            str(bin_dir / "python"),
            "-c",
            "import apnsd.worker.daemon, supervisor",
        ]
    )


REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHONS = ("/usr/local/bin/python3.11", "/usr/bin/python3.11", "/usr/bin/python3")


@pytest.fixture(scope="module")
def image_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """apnsd installed as the Dockerfile installs it (``pip install .``, not editable) into a venv built
    from a system Python that any user can read, like the image's; returns its bin directory.

    The test venv cannot stand in for it as a non-root user: its interpreter lives under /root here."""
    python = next((p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)), None)
    assert python is not None, f"no system Python 3 found ({', '.join(SYSTEM_PYTHONS)})"
    base = Path(tempfile.mkdtemp(prefix="apnsd-image-venv-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    venv = base / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(REPO)], capture_output=True, text=True, timeout=600, cwd=base
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    for path in (base, *base.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o055 | (0o011 if path.is_dir() else 0))
    yield venv / "bin"
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Container:
    """A stand-in for one container: its own /tmp, the image's user and environment, the copied conf."""

    base: Path
    user: tuple[int, int] | None  # None: run as whoever runs the tests
    private_tmp: bool  # True: a mount namespace with base/tmp over /tmp; False: /tmp paths rewritten
    env: dict[str, str] = field(default_factory=dict)
    conf: Path = Path()

    @property
    def tmp(self) -> Path:
        """The directory that is the container's /tmp."""
        return self.base / "tmp"

    def argv(self, command: list[str]) -> list[str]:
        """``command`` as it runs inside the container: in its mount namespace, as its user."""
        if self.user is not None:
            uid, gid = self.user
            command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]
        if self.private_tmp:
            command = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                'mount --bind "$0" /tmp && cd "$1" && shift && exec "$@"',
                str(self.tmp),
                image_workdir(),
                *command,
            ]
        return command

    def run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (like `docker exec`), capturing its output."""
        cwd = None if self.private_tmp else self.tmp
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=30, env=self.env, cwd=cwd)

    def healthcheck(self) -> tuple[int, str]:
        """Run the image's HEALTHCHECK command; returns its exit code and output."""
        (check,) = instructions("HEALTHCHECK")
        done = self.run(exec_form(check))
        return done.returncode, done.stdout + done.stderr


def setup_container(base: Path, user: tuple[int, int] | None, private_tmp: bool, pki: Any) -> Container:
    """Lay out a fresh install: the conf where the Dockerfile puts it, credentials the user can read, an empty /tmp."""
    c = Container(base, user, private_tmp)
    base.chmod(0o755)
    c.tmp.mkdir(mode=0o1777)
    c.tmp.chmod(0o1777)
    secrets = base / "run" / "secrets" / "apnsd"
    secrets.mkdir(parents=True)
    for src in (pki.client_pem, pki.ca_cert):
        shutil.copy(src, secrets / Path(src).name)
        (secrets / Path(src).name).chmod(0o440)
    if user is not None:  # like a Kubernetes Secret volume with fsGroup and defaultMode 0440
        for p in (secrets, *secrets.iterdir()):
            os.chown(p, 0, user[1])
        secrets.chmod(0o750)
    dest = base / copied_to("deploy/supervisord.conf").lstrip("/")
    dest.parent.mkdir(parents=True)
    text = SUPERVISORD_CONF.read_text(encoding="utf-8")
    if not private_tmp:
        text = text.replace("/tmp/", f"{c.tmp}/")
    dest.write_text(text, encoding="utf-8")
    c.conf = dest
    return c


@pytest.fixture(params=["image-user", "root"])
def container(
    request: pytest.FixtureRequest, pki: Any, redis_server: Any, binary_mock: Any, rdb: Any
) -> Iterator[tuple[Container, Any]]:
    """A fresh container layout for the image's user (uid from USER) or for root, with a binary mock gateway."""
    as_root = os.geteuid() == 0
    user: tuple[int, int] | None = None
    bin_dir = VENV_BIN
    if request.param == "image-user":
        if as_root:
            uid, gid = image_user()
            bin_dir = request.getfixturevalue("image_install")
            assert "" == venv_unusable_as(bin_dir, uid, gid)
            user = (uid, gid)
    elif not as_root:
        pytest.skip("the tests do not run as root, so there is no root variant to run")
    private_tmp = (
        as_root
        and not bin_dir.is_relative_to("/tmp")  # the venv must stay visible
        and not _can_run(["unshare", "--mount", "--propagation", "private", "true"])
    )
    base = Path(tempfile.mkdtemp(prefix="apnsd-image-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    mock = binary_mock()
    c = setup_container(base, user, private_tmp, pki)
    secrets = base / "run" / "secrets" / "apnsd"
    c.env = {
        **image_env(),
        "PATH": f"{bin_dir}:{DOCKER_PATH}",
        "HOME": "/nonexistent" if user else "/root",
        # what `docker run -e ...` adds; metrics moved off 0.0.0.0 as the Dockerfile comment says to
        "APNSD_REDIS_URL": redis_server.url,
        "APNSD_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "APNSD_APP_DEFAULT_HOST": mock.host,
        "APNSD_APP_DEFAULT_PORT": str(mock.port),
        "APNSD_APP_DEFAULT_PROTOCOL": "binary",
        "APNSD_APP_DEFAULT_CERT": str(secrets / Path(pki.client_pem).name),
        "APNSD_APP_DEFAULT_CA_FILE": str(secrets / Path(pki.ca_cert).name),
    }
    if not private_tmp:
        c.env["APNSD_WORKER_STATE_DIR"] = str(c.tmp / "apnsd")
    yield c, mock
    shutil.rmtree(base, ignore_errors=True)


def start_entrypoint(c: Container) -> tuple[subprocess.Popen[bytes], OutputReader]:
    """Run the Dockerfile's ENTRYPOINT (with the conf path it copies to) with stdout a pipe the container user owns."""
    (entrypoint,) = instructions("ENTRYPOINT")
    argv = exec_form(entrypoint)
    assert ["supervisord", "-c", copied_to("deploy/supervisord.conf")] == argv
    argv = [argv[0], "-c", str(c.conf)]  # the same file, at this test's copy of the image's /etc/apnsd
    read_end, write_end = os.pipe()
    if c.user is not None:  # container runtimes hand the process a stdout its user owns
        os.fchown(write_end, *c.user)
    proc = subprocess.Popen(
        c.argv(argv), stdout=write_end, stderr=write_end, env=c.env, cwd=None if c.private_tmp else c.tmp
    )
    os.close(write_end)
    return proc, OutputReader(os.fdopen(read_end, "rb"))


def test_entrypoint_runs_the_worker_and_healthcheck_follows_it(container: tuple[Container, Any], jq: JobQueue) -> None:
    """HEALTHCHECK (/healthz) exits 1 with one line before the worker runs and after `docker stop`, 0 while it runs."""
    c, mock = container
    healthz = f"http://{c.env['APNSD_METRICS_LISTEN']}/healthz"
    code, out = c.healthcheck()
    assert (1, 1) == (code, out.count("\n"))
    assert out.startswith(f"unhealthy: cannot reach {healthz}: ")

    proc, output = start_entrypoint(c)
    try:
        code, out = wait_for(
            lambda: (
                ((h := c.healthcheck())[1] == "alive: 1 delivery loop(s) running\n" and h)
                or (proc.poll() is not None and h)
            ),
            30,
            "the HEALTHCHECK to pass",
        )
        assert (0, "alive: 1 delivery loop(s) running\n") == (code, out), output.text()
        token = os.urandom(32).hex()
        push_all(jq, [job(token)])
        wait_for(lambda: token in mock.record.accepted_tokens(), 20, "the job delivered")
        assert 1 == len(output.events("started")), output.text()
    finally:
        exit_code = stop_by_pid(proc, 60)  # `docker stop`: SIGTERM to PID 1
        output.join(5)

    assert 0 == exit_code, output.text()
    assert [True] == [e["clean"] for e in output.events("stopped")]
    code, out = c.healthcheck()
    assert (1, 1) == (code, out.count("\n"))
    assert out.startswith(f"unhealthy: cannot reach {healthz}: ")
