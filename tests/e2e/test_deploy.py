"""The deployment files (Dockerfile, supervisord, compose, Kubernetes) agree with each other and with apnsd."""

from __future__ import annotations

import configparser
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from supervisor import events
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from apnsd.config import WorkerConfig, load_config
from tests.support.dockerfile import ROOT, copied_to, copies, dockerfile, exec_form, instructions

DEPLOY = ROOT / "deploy"
SUPERVISORD_CONF = DEPLOY / "supervisord.conf"
K8S = DEPLOY / "kubernetes"
DEFAULT_GRACE = WorkerConfig().grace_period


# --- Dockerfile --------------------------------------------------------------------


def test_dockerfile_copy_sources_exist() -> None:
    """Every file or folder the Dockerfile copies from the build context is in the repository."""
    missing = [s for sources, _ in copies() for s in sources if not (ROOT / s).exists()]
    assert [] == missing


def test_base_image_is_a_pinned_slim_python() -> None:
    """The base image is python 3.11 slim-bookworm pinned to a full x.y.z version, never latest."""
    (base,) = instructions("FROM")
    assert "latest" not in base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_image_runs_as_a_non_root_user() -> None:
    """The last USER is neither root nor uid 0, and it is the uid the Kubernetes manifest expects."""
    user = instructions("USER")[-1].split(":")[0]
    assert user not in ("root", "0", "")
    assert user in ("apnsd", "10001")


def test_healthcheck_asks_the_liveness_endpoint() -> None:
    """The image's HEALTHCHECK asks /healthz (liveness, not readiness) with a timeout and a start period."""
    (check,) = instructions("HEALTHCHECK")
    assert ["apnsd", "health", "--liveness", "--http"] == exec_form(check)
    assert "--timeout=" in check and "--start-period=" in check


def test_entrypoint_is_supervisord_with_the_copied_conf() -> None:
    """The ENTRYPOINT starts supervisord with the config that the Dockerfile copies into place."""
    (entrypoint,) = instructions("ENTRYPOINT")
    assert ["supervisord", "-c", copied_to("deploy/supervisord.conf")] == exec_form(entrypoint)


def test_example_config_is_baked_only_as_an_example() -> None:
    """config/apnsd.toml goes into the image as an .example, so it never masks a mounted config."""
    assert copied_to("config/apnsd.toml").endswith(".example")
    assert all(not dest.endswith("/apnsd.toml") for _, dest in copies())


def test_image_bakes_in_no_credentials() -> None:
    """Nothing the Dockerfile copies or sets in ENV looks like a credential."""
    secretish = re.compile(r"\.(pem|p12|p8|key|pfx)\b|secrets|PASSPHRASE|TOKEN_KEY", re.IGNORECASE)
    copied = [s for sources, dest in copies() for s in [*sources, dest]]
    assert [] == [s for s in copied + instructions("ENV") if secretish.search(s)]


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """pyproject.toml is copied and installed in its own layer, before the apnsd source, for caching."""
    steps = dockerfile()
    first_pyproject = next(n for n, i in enumerate(steps) if i.keyword == "COPY" and "pyproject.toml" in i.args)
    first_source = next(n for n, i in enumerate(steps) if i.keyword == "COPY" and "apnsd/" in i.args)
    installs = [n for n, i in enumerate(steps) if i.keyword == "RUN" and "pip install" in i.args]
    assert first_pyproject < installs[0] < first_source < installs[-1]


# --- .dockerignore -----------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob as a regex: ** spans folders, * and ? stay inside one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps this context path (or a folder above it) out of the build."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _ignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "apns.pem",
        "config/apns.pem",
        "deploy/secrets/apns.pem",
        "secrets/anything",
        "AuthKey_ABC123DEFG.p8",
        "certs/push.p12",
        "push.key",
        ".git/config",
        ".venv/bin/python",
        "apnsd/__pycache__/x.cpython-311.pyc",
        "benchmarks/results/run.json",
        "benchmarks/peers/node_modules/apn/index.js",
        ".pytest_cache/v/cache",
    ],
)
def test_dockerignore_keeps_secrets_and_clutter_out(path: str) -> None:
    """Credentials, version control, virtualenvs, caches and benchmark results never reach the build context."""
    assert dockerignored(path)


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """No file that the Dockerfile copies is excluded from the build context."""
    assert [] == [s for sources, _ in copies() for s in sources if dockerignored(s)]


# --- supervisord -------------------------------------------------------------------


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> ServerOptions:
    """supervisord's own parse of deploy/supervisord.conf, with no APNSD_* variable set."""
    monkeypatch.delenv("APNSD_CONFIG", raising=False)
    options = ServerOptions()
    options.realize(args=["-c", str(SUPERVISORD_CONF)])
    return options


def program(options: ServerOptions) -> Any:
    """The one [program:apnsd] process config."""
    (group,) = [g for g in options.process_group_configs if g.name == "apnsd"]
    (proc,) = group.process_configs
    return proc


def test_fatal_listener_watches_apnsd(supervisor: ServerOptions) -> None:
    """An event listener runs apnsd's FATAL listener for the apnsd program on PROCESS_STATE_FATAL only."""
    (group,) = [g for g in supervisor.process_group_configs if g.name == "apnsd_fatal"]
    (proc,) = group.process_configs
    assert [events.ProcessStateFatalEvent] == list(group.pool_events)
    assert "python3 -m apnsd.cli.fatal apnsd" == proc.command


def test_supervisord_conf_is_valid_ini() -> None:
    """deploy/supervisord.conf parses as INI and has the sections supervisorctl needs."""
    parser = configparser.RawConfigParser()
    parser.read(SUPERVISORD_CONF, encoding="utf-8")
    assert {"supervisord", "unix_http_server", "rpcinterface:supervisor", "supervisorctl", "program:apnsd"} <= set(
        parser.sections()
    )


def test_supervisord_runs_in_the_foreground_without_a_log_file(supervisor: ServerOptions) -> None:
    """supervisord stays in the foreground as PID 1 and writes its own log only to stdout."""
    assert supervisor.nodaemon is True
    assert ("/dev/null", 0) == (supervisor.logfile, supervisor.logfile_maxbytes)
    assert supervisor.pidfile.startswith(("/tmp/", "/run/"))


def test_supervisorctl_reaches_supervisord_over_an_owner_only_socket(supervisor: ServerOptions) -> None:
    """supervisorctl's server URL is the Unix socket supervisord serves, with mode 0700."""
    (server,) = supervisor.server_configs
    assert 0o700 == server["chmod"]
    assert f"unix://{server['file']}" == supervisor.serverurl


def test_apnsd_command_needs_no_config_variable(supervisor: ServerOptions) -> None:
    """The program runs `apnsd run` and leaves the config path to apnsd, so an unset APNSD_CONFIG is fine."""
    assert "apnsd run" == program(supervisor).command


def test_apnsd_stops_gracefully_before_supervisord_kills_it(supervisor: ServerOptions) -> None:
    """apnsd gets SIGTERM, as a group, and more than its grace period before any SIGKILL."""
    proc = program(supervisor)
    assert signal.SIGTERM == proc.stopsignal
    assert proc.stopwaitsecs > DEFAULT_GRACE
    assert proc.stopasgroup and proc.killasgroup


def test_apnsd_is_restarted_whenever_it_exits(supervisor: ServerOptions) -> None:
    """autorestart is unconditional, with a start window and a bounded number of failed starts."""
    proc = program(supervisor)
    assert proc.autorestart is RestartUnconditionally
    assert proc.startsecs >= 1
    assert 1 <= proc.startretries <= 10


def test_apnsd_logs_go_straight_to_the_container_streams(supervisor: ServerOptions) -> None:
    """stdout and stderr go to supervisord's own streams, unrotated."""
    proc = program(supervisor)
    assert ("/dev/stdout", 0) == (proc.stdout_logfile, proc.stdout_logfile_maxbytes)
    assert ("/dev/stderr", 0) == (proc.stderr_logfile, proc.stderr_logfile_maxbytes)


# --- YAML: compose and Kubernetes --------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    """Every document in one YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s(kind: str) -> dict[str, Any]:
    """The one Kubernetes object of this kind in deploy/kubernetes/."""
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in load_yaml(p) if d.get("kind") == kind]
    assert 1 == len(found), f"expected one {kind}, found {len(found)}"
    return found[0]


def apnsd_container() -> dict[str, Any]:
    """The apnsd container of the Deployment."""
    (container,) = [c for c in k8s("Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "apnsd"]
    return container


def seconds(duration: str | int) -> float:
    """A compose duration such as '40s' or '1m30s' in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def compose() -> dict[str, Any]:
    """deploy/docker-compose.yml."""
    (doc,) = load_yaml(DEPLOY / "docker-compose.yml")
    return doc


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_in_deploy_parses(path: Path) -> None:
    """Each YAML file under deploy/ is well-formed and holds at least one mapping."""
    docs = load_yaml(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_kubernetes_probes_use_the_health_endpoints() -> None:
    """Readiness gets /readyz and liveness /healthz, both on the container's metrics port."""
    container = apnsd_container()
    ports = {p["name"] for p in container["ports"]}
    assert {"path": "/readyz", "port": "metrics"} == container["readinessProbe"]["httpGet"]
    assert {"path": "/healthz", "port": "metrics"} == container["livenessProbe"]["httpGet"]
    assert "metrics" in ports


def test_compose_healthcheck_is_liveness() -> None:
    """compose's healthcheck asks /healthz, like the image's HEALTHCHECK, so an APNs or Redis outage never fails it."""
    assert ["CMD", "apnsd", "health", "--liveness", "--http"] == compose()["services"]["apnsd"]["healthcheck"]["test"]


def test_kubernetes_waits_longer_than_supervisord(supervisor: ServerOptions) -> None:
    """grace period < supervisord stopwaitsecs < terminationGracePeriodSeconds, so a drain is never cut short."""
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert DEFAULT_GRACE < program(supervisor).stopwaitsecs < pod["terminationGracePeriodSeconds"]


def test_kubernetes_pod_runs_as_the_image_user_on_a_read_only_root() -> None:
    """The pod runs as uid 10001, non-root, on a read-only root filesystem with an emptyDir for /tmp."""
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    container = apnsd_container()
    assert (True, 10001) == (spec["securityContext"]["runAsNonRoot"], spec["securityContext"]["runAsUser"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_kubernetes_mounts_the_configmap_where_apnsd_config_points() -> None:
    """APNSD_CONFIG names the apnsd.toml key of the mounted ConfigMap, without hiding supervisord.conf."""
    container = apnsd_container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_path = Path(env["APNSD_CONFIG"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in k8s("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert k8s("ConfigMap")["metadata"]["name"] == volumes[mounts[str(config_path.parent)]]["configMap"]["name"]
    assert config_path.name in k8s("ConfigMap")["data"]
    assert not Path(copied_to("deploy/supervisord.conf")).is_relative_to(config_path.parent)
    assert env["APNSD_REDIS_URL"].startswith("redis://")


def test_kubernetes_secret_is_mounted_where_the_config_looks(tmp_path: Path) -> None:
    """The credential paths in the ConfigMap's apnsd.toml lie under the Secret's mount point."""
    container = apnsd_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in k8s("Deployment")["spec"]["template"]["spec"]["volumes"]}
    (secret_volume,) = [n for n, v in volumes.items() if "secret" in v]
    assert k8s("Secret")["metadata"]["name"] == volumes[secret_volume]["secret"]["secretName"]
    config = load_config(_write(tmp_path, k8s("ConfigMap")["data"]["apnsd.toml"]), env={})
    assert config.apps["default"].cert.startswith(mounts[secret_volume] + "/")


def test_kubernetes_deployment_is_scraped_by_prometheus() -> None:
    """The pod template carries the prometheus.io annotations for the metrics port."""
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    ports = [p["containerPort"] for p in apnsd_container()["ports"]]
    assert "true" == annotations["prometheus.io/scrape"]
    assert int(annotations["prometheus.io/port"]) in ports


def test_kustomization_lists_existing_files_but_not_the_placeholder_secret() -> None:
    """kustomization.yaml names files that exist and leaves out the placeholder Secret."""
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert {"configmap.yaml", "deployment.yaml"} <= set(resources)
    assert "secret.yaml" not in resources
    assert all((K8S / r).is_file() for r in resources)


def test_kubernetes_secret_is_only_a_placeholder() -> None:
    """The example Secret holds no PEM, PKCS#12 or key material."""
    values = " ".join(str(v) for v in (k8s("Secret").get("stringData") or {}).values())
    assert "BEGIN" not in values and "REPLACE" in values
    assert "data" not in k8s("Secret")


def test_compose_runs_apnsd_against_its_redis() -> None:
    """apnsd is built from the repository's Dockerfile, waits for a healthy Redis and uses it."""
    services = compose()["services"]
    apnsd = services["apnsd"]
    assert "redis:7-alpine" == services["redis"]["image"]
    assert ["CMD", "redis-cli", "ping"] == services["redis"]["healthcheck"]["test"]
    assert (
        DEPLOY / apnsd["build"]["context"] / apnsd["build"].get("dockerfile", "Dockerfile")
    ).resolve() == ROOT / "Dockerfile"
    assert "service_healthy" == apnsd["depends_on"]["redis"]["condition"]
    assert apnsd["environment"]["APNSD_REDIS_URL"].startswith("redis://redis:")


def test_compose_mounts_config_read_only_and_credentials_as_secrets() -> None:
    """The config is a read-only mount at the default path and credentials come in as secrets under /run/secrets."""
    apnsd = compose()["services"]["apnsd"]
    assert any(v.endswith(":/etc/apnsd/apnsd.toml:ro") for v in apnsd["volumes"])
    targets = [s["target"] if isinstance(s, dict) else f"/run/secrets/{s}" for s in apnsd["secrets"]]
    assert targets and all(t.startswith("/run/secrets/") for t in targets)
    assert set(compose()["secrets"]) == {s["source"] if isinstance(s, dict) else s for s in apnsd["secrets"]}


def test_compose_publishes_metrics_on_loopback_only() -> None:
    """The metrics port is published on 127.0.0.1 and nothing else is published."""
    assert ["127.0.0.1:9464:9464"] == compose()["services"]["apnsd"]["ports"]


def test_compose_waits_longer_than_supervisord(supervisor: ServerOptions) -> None:
    """compose's stop_grace_period exceeds supervisord's stopwaitsecs, so docker never kills a draining worker."""
    assert seconds(compose()["services"]["apnsd"]["stop_grace_period"]) > program(supervisor).stopwaitsecs


# --- config files ------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "apnsd.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_example_config_is_a_valid_config() -> None:
    """config/apnsd.toml, the documented example, loads and validates as it is."""
    config = load_config(str(ROOT / "config" / "apnsd.toml"), env={})
    assert DEFAULT_GRACE == config.worker.grace_period


def test_kubernetes_configmap_is_a_valid_config(tmp_path: Path) -> None:
    """The ConfigMap's apnsd.toml loads and validates, with the Deployment's environment on top."""
    env = {e["name"]: e["value"] for e in apnsd_container()["env"] if "value" in e and e["name"] != "APNSD_CONFIG"}
    config = load_config(_write(tmp_path, k8s("ConfigMap")["data"]["apnsd.toml"]), env=env)
    assert env["APNSD_REDIS_URL"] == config.redis.url
