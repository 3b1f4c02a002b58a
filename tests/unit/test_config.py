"""Configuration: defaults, the TOML file, APNSD_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from apnsd.config import AppConfig, load_config
from apnsd.errors import ConfigError
from tests.support.configs import config_error, write

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_file_or_environment():
    """With nothing configured there is one http2 production app named default and documented defaults."""
    config = load_config(None, {})

    assert ["default"] == list(config.apps)
    assert AppConfig() == config.apps["default"]
    assert "redis://127.0.0.1:6379/0" == config.redis.url
    assert "apnsd" == config.redis.prefix
    assert 1000 == config.worker.batch_size
    assert "127.0.0.1:9464" == config.metrics.listen
    assert ("auto", "info") == (config.log.format, config.log.level)
    assert "apnsd:queue" == config.queue_key(config.apps["default"])
    assert "" == config.source


def test_documented_example_config_loads():
    """config/apnsd.toml, the documented example, is a valid configuration."""
    path = str(REPO / "config" / "apnsd.toml")

    config = load_config(path, {})

    assert path == config.source
    assert "/run/secrets/apnsd/apns.pem" == config.apps["default"].cert
    assert ("api.push.apple.com", 443) == config.apps["default"].gateway()


def test_token_auth_example_config_loads_as_token_auth():
    """config/token-auth.toml, the .p8 example, is a valid token-auth configuration for the sandbox."""
    app = load_config(str(REPO / "config" / "token-auth.toml"), {}).apps["default"]

    assert ("token", "sandbox", "", "com.example.app") == (app.auth, app.environment, app.cert, app.topic)


def test_toml_file_sets_values(tmp_path):
    """Values from the TOML file replace the defaults, section by section and app by app."""
    path = write(
        tmp_path,
        """
[redis]
url = "redis://10.0.0.5:6380/2"
prefix = "push"
[worker]
batch_size = 50
[apps.default]
protocol = "binary"
host = "gateway.example.net"
environment = "sandbox"
[apps.voip-app]
queue = "push:voip"
""",
    )

    config = load_config(path, {})

    assert ("redis://10.0.0.5:6380/2", "push", 50) == (config.redis.url, config.redis.prefix, config.worker.batch_size)
    assert ("binary", "sandbox") == (config.apps["default"].protocol, config.apps["default"].environment)
    assert {"push:queue": ["default"], "push:voip": ["voip-app"]} == config.queues()


def test_relative_credential_paths_resolve_against_the_config_folder(tmp_path):
    """cert, key, pkcs12, ca_file and token_key given relative to the file become absolute from its folder."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(
        folder,
        """
[apps.default]
cert = "certs/apns.pem"
key = "/abs/apns.key"
ca_file = "ca.pem"
[apps.p12]
pkcs12 = "../secrets/apns.p12"
[apps.token]
token_key = "AuthKey_ABC123DEFG.p8"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"
topic = "com.example.app"
""",
    )

    apps = load_config(path, {}).apps

    assert str(folder / "certs/apns.pem") == apps["default"].cert
    assert "/abs/apns.key" == apps["default"].key
    assert str(folder / "ca.pem") == apps["default"].ca_file
    assert str(folder / "../secrets/apns.p12") == apps["p12"].pkcs12
    assert str(folder / "AuthKey_ABC123DEFG.p8") == apps["token"].token_key


def test_environment_overrides_sections_and_wins_over_the_file(tmp_path):
    """APNSD_<SECTION>_<KEY> overrides the file, with strings converted to the key's type."""
    path = write(tmp_path, "[worker]\nbatch_size = 50\n")
    env = {
        "APNSD_WORKER_BATCH_SIZE": "200",
        "APNSD_REDIS_URL": "redis://r:1/0",
        "APNSD_REDIS_RESULTS_STREAM": "true",
        "APNSD_WORKER_GRACE_PERIOD": "7.5",
        "APNSD_METRICS_LISTEN": "",
        "APNSD_LOG_FORMAT": "json",
        "APNSD_CONFIG": "/ignored/by/load_config.toml",
        "PATH": "/usr/bin",
    }

    config = load_config(path, env)

    assert (200, "redis://r:1/0", True) == (config.worker.batch_size, config.redis.url, config.redis.results_stream)
    assert (7.5, "", "json") == (config.worker.grace_period, config.metrics.listen, config.log.format)


def test_environment_overrides_app_keys_including_names_with_underscores():
    """APNSD_APP_<NAME>_<KEY> sets an app key; app names and key names may both contain underscores."""
    env = {
        "APNSD_APP_DEFAULT_PORT": "2197",
        "APNSD_APP_MY_APP_PROTOCOL": "binary",
        "APNSD_APP_MY_APP_HOST": "gateway.example.net",
        "APNSD_APP_MY_APP_CONNECT_TIMEOUT": "3",
        "APNSD_APP_MY_APP_CA_FILE": "/etc/ca.pem",
        "APNSD_APP_TOKEN_APP_TOKEN_KEY": "/k.p8",
        "APNSD_APP_TOKEN_APP_KEY_ID": "ABC123DEFG",
        "APNSD_APP_TOKEN_APP_TEAM_ID": "DEF123GHIJ",
        "APNSD_APP_TOKEN_APP_TOPIC": "com.example.app",
    }

    apps = load_config(None, env).apps

    assert {"default", "my_app", "token_app"} == set(apps)
    assert 2197 == apps["default"].port
    assert ("binary", 3.0, "/etc/ca.pem") == (
        apps["my_app"].protocol,
        apps["my_app"].connect_timeout,
        apps["my_app"].ca_file,
    )
    assert ("/k.p8", "ABC123DEFG", "DEF123GHIJ") == (
        apps["token_app"].token_key,
        apps["token_app"].key_id,
        apps["token_app"].team_id,
    )
    assert "token" == apps["token_app"].auth


def test_environment_override_of_an_app_from_the_file(tmp_path):
    """An app defined in the file keeps its other keys when the environment overrides one of them."""
    path = write(tmp_path, '[apps.default]\nenvironment = "sandbox"\ncert = "/c.pem"\n')

    app = load_config(path, {"APNSD_APP_DEFAULT_CERT": "/other.pem"}).apps["default"]

    assert ("sandbox", "/other.pem") == (app.environment, app.cert)


@pytest.mark.parametrize("var", ["APNSD_NOPE_URL", "APNSD_REDIS", "APNSD_APP_DEFAULT_NOPE"])
def test_unknown_environment_variable_is_named(var):
    """An APNSD_* variable that matches no setting is an error naming the variable."""
    assert var == config_error(None, {var: "1"}).key


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[worker]\nbatch_sise = 5\n", "worker.batch_sise"),
        ('[apps.default]\ncertt = "x"\n', "apps.default.certt"),
        ("[apps.second]\nreconect_interval = 60\n", "apps.second.reconect_interval"),
    ],
)
def test_unknown_key_in_the_file_is_named(tmp_path, toml, key):
    """A misspelt key is an error whose key is the full dotted name of that key."""
    err = config_error(write(tmp_path, toml))

    assert key == err.key
    assert key in str(err)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"APNSD_WORKER_BATCH_SIZE": "many"}, "worker.batch_size"),
        ({"APNSD_WORKER_BATCH_SIZE": "0"}, "worker.batch_size"),
        ({"APNSD_WORKER_BATCH_SIZE": "10001"}, "worker.batch_size"),
        ({"APNSD_WORKER_BATCH_SIZE": "100", "APNSD_WORKER_MAX_IN_FLIGHT": "50"}, "worker.max_in_flight"),
        ({"APNSD_WORKER_HEARTBEAT_TTL": "1", "APNSD_WORKER_HEARTBEAT_INTERVAL": "5"}, "worker.heartbeat_ttl"),
        ({"APNSD_LOG_LEVEL": "loud"}, "log.level"),
        ({"APNSD_REDIS_URL": "http://localhost"}, "redis.url"),
        ({"APNSD_REDIS_PREFIX": ""}, "redis.prefix"),
        ({"APNSD_METRICS_LISTEN": "9464"}, "metrics.listen"),
        ({"APNSD_APP_DEFAULT_PORT": "https"}, "apps.default.port"),
        ({"APNSD_APP_DEFAULT_PORT": "70000"}, "apps.default.port"),
        ({"APNSD_APP_DEFAULT_PROTOCOL": "spdy"}, "apps.default.protocol"),
        ({"APNSD_APP_DEFAULT_ENVIRONMENT": "staging"}, "apps.default.environment"),
        ({"APNSD_APP_DEFAULT_RECONNECT_INTERVAL": "10"}, "apps.default.reconnect_interval"),
        ({"APNSD_APP_DEFAULT_MAX_CONNECTS_PER_MINUTE": "0"}, "apps.default.max_connects_per_minute"),
        ({"APNSD_APP_DEFAULT_BACKOFF_INITIAL": "10", "APNSD_APP_DEFAULT_BACKOFF_MAX": "5"}, "apps.default.backoff_max"),
        ({"APNSD_APP_DEFAULT_MAX_ATTEMPTS": "-1"}, "apps.default.max_attempts"),
        ({"APNSD_APP_DEFAULT_OUTAGE_BACKOFF": "nan"}, "apps.default.outage_backoff"),
        (
            {"APNSD_APP_DEFAULT_OUTAGE_BACKOFF": "120", "APNSD_APP_DEFAULT_OUTAGE_BACKOFF_MAX": "60"},
            "apps.default.outage_backoff_max",
        ),
        ({"APNSD_APP_DEFAULT_THROTTLE_DELAY": "0"}, "apps.default.throttle_delay"),
        ({"APNSD_APP_DEFAULT_RETRY_FOR": "inf"}, "apps.default.retry_for"),
        ({"APNSD_APP_DEFAULT_STALL_TIMEOUT": "0"}, "apps.default.stall_timeout"),
        ({"APNSD_APP_DEFAULT_PING_TIMEOUT": "nan"}, "apps.default.ping_timeout"),
        ({"APNSD_APP_DEFAULT_PAYLOAD_LIMIT": "-1"}, "apps.default.payload_limit"),
        ({"APNSD_APP_DEFAULT_FEEDBACK_INTERVAL": "5"}, "apps.default.feedback_interval"),
        ({"APNSD_APP_OTHER_CONFIRM_DELAY": "soon"}, "apps.other.confirm_delay"),
    ],
)
def test_bad_values_name_the_key(env, key):
    """A value of the wrong type or out of range is an error naming the dotted key."""
    err = config_error(None, env)

    assert key == err.key
    assert f"config key {key!r}" in str(err)


def test_bad_value_in_the_file_names_the_key(tmp_path):
    """A wrongly typed value in the file names its dotted key, app name included."""
    assert "apps.prod.port" == config_error(write(tmp_path, '[apps.prod]\nport = "https"\n')).key


def test_app_names_must_be_lower_case(tmp_path):
    """App names are lower case letters, digits, - and _; anything else is an error naming the app."""
    assert "apps.Prod" == config_error(write(tmp_path, "[apps.Prod]\n")).key


def test_at_least_one_app(tmp_path):
    """An empty apps table is an error naming apps."""
    assert "apps" == config_error(write(tmp_path, "[apps]\n")).key


TOKEN_APP = {
    "APNSD_APP_DEFAULT_TOKEN_KEY": "/k.p8",
    "APNSD_APP_DEFAULT_KEY_ID": "ABC123DEFG",
    "APNSD_APP_DEFAULT_TEAM_ID": "DEF123GHIJ",
    "APNSD_APP_DEFAULT_TOPIC": "com.example.app",
}


def test_complete_token_auth_is_accepted():
    """A .p8 key with a 10-character key id and team id and a topic is valid token auth."""
    assert "token" == load_config(None, TOKEN_APP).apps["default"].auth


@pytest.mark.parametrize(
    ("missing", "key"),
    [
        ("APNSD_APP_DEFAULT_KEY_ID", "apps.default.key_id"),
        ("APNSD_APP_DEFAULT_TEAM_ID", "apps.default.team_id"),
        ("APNSD_APP_DEFAULT_TOPIC", "apps.default.topic"),
    ],
)
def test_token_auth_needs_key_id_team_id_and_topic(missing, key):
    """Token auth without its key id, team id or topic is an error naming the missing key."""
    env = {k: v for k, v in TOKEN_APP.items() if k != missing}

    assert key == config_error(None, env).key


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"APNSD_APP_DEFAULT_KEY_ID": "SHORT"}, "apps.default.key_id"),
        ({"APNSD_APP_DEFAULT_TOKEN_REFRESH": "600"}, "apps.default.token_refresh"),
        ({"APNSD_APP_DEFAULT_TOKEN_REFRESH": "3600"}, "apps.default.token_refresh"),
        ({"APNSD_APP_DEFAULT_TOKEN_REFRESH": "3301"}, "apps.default.token_refresh"),
        ({"APNSD_APP_DEFAULT_PROTOCOL": "binary"}, "apps.default.token_key"),
        ({"APNSD_APP_DEFAULT_CERT": "/c.pem"}, "apps.default.token_key"),
    ],
)
def test_token_auth_misconfigurations_name_the_key(extra, key):
    """Bad key ids, refresh intervals, binary protocol or a certificate beside the .p8 key are refused."""
    assert key == config_error(None, {**TOKEN_APP, **extra}).key


def test_cert_and_pkcs12_together_are_rejected():
    """Setting both a PEM certificate and a PKCS#12 file is an error naming pkcs12."""
    assert (
        "apps.default.pkcs12"
        == config_error(None, {"APNSD_APP_DEFAULT_CERT": "/c.pem", "APNSD_APP_DEFAULT_PKCS12": "/c.p12"}).key
    )


def test_key_without_cert_is_rejected():
    """A private key file without a certificate file is an error naming key."""
    assert "apps.default.key" == config_error(None, {"APNSD_APP_DEFAULT_KEY": "/k.pem"}).key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "does not exist"),
        ("[worker\n", "is not valid TOML"),
    ],
)
def test_unreadable_file_is_a_config_error(tmp_path, text, problem):
    """A missing or syntactically broken file is an error about --config that says what is wrong."""
    path = str(tmp_path / "apnsd.toml") if text is None else write(tmp_path, text)

    err = config_error(path)

    assert "--config" == err.key
    assert problem in err.problem


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    """A file that is not UTF-8 text (a binary, a Latin-1 export) is an error about --config, not a traceback."""
    path = tmp_path / "apnsd.toml"
    path.write_bytes(b'[apps.default]\ntopic = "caf\xe9"\n')

    err = config_error(str(path))

    assert ("--config", f"{path} is not UTF-8 text") == (err.key, err.problem)


@pytest.mark.parametrize(
    ("protocol", "environment", "expected"),
    [
        ("http2", "production", ("api.push.apple.com", 443)),
        ("http2", "sandbox", ("api.sandbox.push.apple.com", 443)),
    ],
)
def test_gateway_defaults_per_protocol_and_environment(protocol, environment, expected):
    """Without host and port the app connects to Apple's gateway for its protocol and environment."""
    assert expected == AppConfig(protocol=protocol, environment=environment).gateway()


@pytest.mark.parametrize("environment", ["production", "sandbox"])
def test_binary_protocol_requires_an_explicit_host(environment):
    """protocol = "binary" without host is refused at load, naming the key (Apple's binary hosts are retired)."""
    err = config_error(None, {"APNSD_APP_DEFAULT_PROTOCOL": "binary", "APNSD_APP_DEFAULT_ENVIRONMENT": environment})

    assert "apps.default.host" == err.key
    assert "retired" in err.problem


def test_binary_protocol_with_a_host_defaults_to_port_2195():
    """A binary app with a host connects to that host on 2195 unless a port is set."""
    assert ("gw.example", 2195) == load_config(
        None, {"APNSD_APP_DEFAULT_PROTOCOL": "binary", "APNSD_APP_DEFAULT_HOST": "gw.example"}
    ).apps["default"].gateway()


def test_gateway_host_and_port_are_overridable():
    """A configured host and port replace Apple's, each on its own."""
    assert ("127.0.0.1", 8443) == AppConfig(host="127.0.0.1", port=8443).gateway()
    assert ("api.push.apple.com", 2197) == AppConfig(port=2197).gateway()
    assert ("proxy", 2195) == AppConfig(protocol="binary", host="proxy").gateway()


def test_feedback_gateway_defaults_and_overrides():
    """The feedback service is the gateway host on 2196, else the configured feedback host and port."""
    assert ("mock", 2196) == AppConfig(protocol="binary", host="mock").feedback_gateway()
    assert ("fb", 9) == AppConfig(
        protocol="binary", host="mock", feedback_host="fb", feedback_port=9
    ).feedback_gateway()


@pytest.mark.parametrize(
    ("app", "push_type", "limit"),
    [
        (AppConfig(), None, 4096),
        (AppConfig(), "alert", 4096),
        (AppConfig(), "voip", 5120),
        (AppConfig(protocol="binary"), None, 2048),
        (AppConfig(protocol="binary"), "voip", 2048),
        (AppConfig(payload_limit=1000), None, 1000),
        (AppConfig(payload_limit=1000), "voip", 1000),
    ],
)
def test_payload_limit_for_protocol_push_type_and_configuration(app, push_type, limit):
    """The payload limit is 4096 for http2, 5120 for http2 VoIP, 2048 for binary, or the configured one."""
    assert limit == app.payload_limit_for(push_type)


def test_config_is_frozen():
    """The validated configuration cannot be changed after loading."""
    config = load_config(None, {})

    with pytest.raises(AttributeError):
        config.worker.batch_size = 5  # type: ignore[misc]


# --- secrets from files ----------------------------------------------------------------------------


def test_secret_keys_read_from_files_in_toml_relative_to_the_config(tmp_path):
    """passphrase_file, proxy_file, url_file and sentinel_password_file hold the secret, without the newline."""
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "proxy").write_text("http://user:pw@127.0.0.1:3128\n")
    (tmp_path / "url").write_text("redis://:pw@127.0.0.1:6379/0\n")
    (tmp_path / "sentinel").write_text("sentinel-pw")
    path = write(
        tmp_path,
        """
[redis]
url_file = "url"
sentinel_password_file = "sentinel"
[apps.default]
pkcs12 = "apns.p12"
passphrase_file = "pass"
proxy_file = "proxy"
""",
    )
    config = load_config(path, {})
    app = config.apps["default"]
    assert ("s3cret", "http://user:pw@127.0.0.1:3128") == (app.passphrase, app.proxy)
    assert ("redis://:pw@127.0.0.1:6379/0", "sentinel-pw") == (config.redis.url, config.redis.sentinel_password)


def test_secret_files_from_the_environment(tmp_path):
    """APNSD_APP_<NAME>_PASSPHRASE_FILE and APNSD_REDIS_URL_FILE read the secret from the file named."""
    (tmp_path / "pass").write_text("from-file\n")
    (tmp_path / "url").write_text("redis://:pw@10.0.0.1:6379/1")
    env = {"APNSD_APP_MY_APP_PASSPHRASE_FILE": str(tmp_path / "pass"), "APNSD_REDIS_URL_FILE": str(tmp_path / "url")}
    config = load_config(None, env)
    assert ("from-file", "redis://:pw@10.0.0.1:6379/1") == (config.apps["my_app"].passphrase, config.redis.url)


def test_environment_secret_wins_over_a_file_in_toml(tmp_path):
    """APNSD_APP_DEFAULT_PASSPHRASE replaces passphrase_file from the config file (the environment wins)."""
    path = write(tmp_path, '[apps.default]\npassphrase_file = "missing"\n')
    assert "env" == load_config(path, {"APNSD_APP_DEFAULT_PASSPHRASE": "env"}).apps["default"].passphrase


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[apps.default]\npassphrase_file = "nope"\n', "apps.default.passphrase_file", "cannot read"),
        ('[apps.default]\npassphrase_file = "a\\u0000b"\n', "apps.default.passphrase_file", "NUL character"),
        ('[redis]\nurl_file = "\\u0000"\n', "redis.url_file", "must be the path of a file"),
        ('[apps.default]\npassphrase_file = "empty"\n', "apps.default.passphrase_file", "is empty"),
        ('[apps.default]\npassphrase = "x"\npassphrase_file = "empty"\n', "apps.default.passphrase_file", "not both"),
        ("[redis]\nurl_file = 3\n", "redis.url_file", "must be the path of a file"),
    ],
)
def test_bad_secret_files_name_the_key(tmp_path, toml, key, problem):
    """A missing, empty or doubly-set secret file is a config error naming the *_file key."""
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), {})
    assert key == info.value.key
    assert problem in info.value.problem


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[apps.default]\ncert = "/run/a\\u0000b.pem"\n', "apps.default.cert"),
        ('[apps.default]\ncert = "/c.pem"\nkey = "\\u0000"\n', "apps.default.key"),
        ('[apps.default]\npkcs12 = "c\\u0000.p12"\n', "apps.default.pkcs12"),
        ('[apps.default]\ncert = "/c.pem"\nca_file = "\\u0000"\n', "apps.default.ca_file"),
        ('[redis]\nurl = "rediss://h"\nssl_ca_file = "\\u0000"\n[apps.a]\ncert = "/c.pem"\n', "redis.ssl_ca_file"),
        ('[worker]\nstate_dir = "/tmp/\\u0000"\n[apps.default]\ncert = "/c.pem"\n', "worker.state_dir"),
    ],
)
def test_a_file_path_holding_a_nul_character_names_the_key(tmp_path, toml, key):
    """TOML can spell a NUL character, which no file path holds: a config error naming the key, not a ValueError."""
    assert key == config_error(write(tmp_path, toml)).key


@pytest.mark.parametrize("value", ["-1", "0.5", "nan", "inf", "86401", "soon"])
def test_credential_probe_interval_is_off_or_a_sane_number_of_seconds(value):
    """credential_probe_interval must be 0 (SIGHUP only) or 1 to 86400 seconds; anything else names the key."""
    err = config_error(None, {"APNSD_APP_DEFAULT_CREDENTIAL_PROBE_INTERVAL": value})

    assert "apps.default.credential_probe_interval" == err.key


@pytest.mark.parametrize(
    "var, value, key",
    [
        ("APNSD_REDIS_SOCKET_TIMEOUT", "-1", "redis.socket_timeout"),
        ("APNSD_REDIS_SOCKET_TIMEOUT", "0", "redis.socket_timeout"),
        ("APNSD_REDIS_SOCKET_TIMEOUT", "nan", "redis.socket_timeout"),
        ("APNSD_REDIS_RESULTS_MAXLEN", "-5", "redis.results_maxlen"),
        ("APNSD_REDIS_RESULTS_MAXLEN", "9223372036854775808", "redis.results_maxlen"),  # Redis: out of range
        ("APNSD_WORKER_GRACE_PERIOD", "inf", "worker.grace_period"),
        ("APNSD_WORKER_GRACE_PERIOD", "1e300", "worker.grace_period"),
        ("APNSD_WORKER_HEARTBEAT_TTL", "inf", "worker.heartbeat_ttl"),
        ("APNSD_WORKER_RECOVER_INTERVAL", "nan", "worker.recover_interval"),
        ("APNSD_WORKER_RECOVER_INTERVAL", "0", "worker.recover_interval"),
        ("APNSD_WORKER_HEARTBEAT_INTERVAL", "-inf", "worker.heartbeat_interval"),
        ("APNSD_WORKER_ID", "a b", "worker.id"),
        ("APNSD_WORKER_ID", "x\n", "worker.id"),
        ("APNSD_METRICS_LISTEN", "127.0.0.1:0", "metrics.listen"),
        ("APNSD_APP_DEFAULT_PORT", "-1", "apps.default.port"),
        ("APNSD_APP_DEFAULT_PORT", "65536", "apps.default.port"),
        ("APNSD_APP_DEFAULT_FEEDBACK_PORT", "-2196", "apps.default.feedback_port"),
        ("APNSD_APP_DEFAULT_CONNECT_TIMEOUT", "inf", "apps.default.connect_timeout"),
        ("APNSD_APP_DEFAULT_RETRY_BACKOFF", "nan", "apps.default.retry_backoff"),
        ("APNSD_APP_DEFAULT_TOPIC", "com.example.app ", "apps.default.topic"),
        ("APNSD_APP_DEFAULT_TOPIC", "com.example.app\n", "apps.default.topic"),
        ("APNSD_APP_DEFAULT_HOST", "mock\r\nx: y", "apps.default.host"),
    ],
)
def test_numbers_and_header_values_out_of_range_are_refused_naming_the_key(var, value, key):
    """NaN, infinities, negative or zero durations, bad ports and header-breaking text fail at load, naming the key."""
    assert key == config_error(env={var: value}).key


def test_an_app_without_credentials_is_refused_for_delivery():
    """An app created by a misspelt APNSD_APP_<NAME>_* variable has no credentials: refused before delivery."""
    from apnsd.config import require_credentials

    config = load_config(None, {"APNSD_APP_DEFAULT_CERT": "/x.pem", "APNSD_APP_DEFUALT_TOPIC": "com.example.app"})

    with pytest.raises(ConfigError) as info:
        require_credentials(config)

    assert "apps.defualt" == info.value.key


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://app:hunter2@h/0", "rediss://app:***@h/0"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
    ],
)
def test_redis_passwords_are_redacted_in_every_url_form(url, shown):
    """Userinfo passwords and password query values are replaced by *** for logs and reports."""
    from apnsd.config import redact_url

    assert shown == redact_url(url)


def test_redis_error_texts_lose_the_quoted_command_and_full_tokens():
    """redis-py quotes a failed pipeline command with its arguments; the logged text keeps only Redis's answer."""
    import redis

    from apnsd.store.queue import safe_error_text

    token = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
    exc = redis.exceptions.ResponseError(
        f'Command # 1 (LPUSH apnsd:dead {{"token":"{token}","job":"..."}}) of pipeline caused error: WRONGTYPE x'
    )
    plain = redis.exceptions.ResponseError(f"ERR unknown token {token}")

    assert ("WRONGTYPE x", "ERR unknown token c9d4c07c…") == (safe_error_text(exc), safe_error_text(plain))


def test_a_device_named_as_a_config_file_is_refused_and_a_fifo_without_writer_reads_as_empty(tmp_path):
    """--config /dev/zero is a clear error naming the key, not a read that never ends; a secret file that is a
    FIFO no program writes to reads as empty at once (a clear "empty" error) instead of waiting for a writer."""
    import os

    fifo = tmp_path / "passphrase"
    os.mkfifo(fifo)
    env = {"APNSD_APP_DEFAULT_PKCS12": "/x.p12", "APNSD_APP_DEFAULT_PASSPHRASE_FILE": str(fifo)}

    assert (
        "config key '--config': cannot read /dev/zero: larger than 16 MiB",
        f"config key 'apps.default.passphrase_file': {fifo} is empty",
    ) == (str(config_error("/dev/zero")), str(config_error(None, env)))


def test_a_config_file_given_through_a_pipe_is_read(tmp_path):
    """--config <(generate-config) works: the pipe's bytes are the configuration."""
    import os

    from apnsd.config import read_file

    r, w = os.pipe()
    os.write(w, b'[redis]\nprefix = "piped"\n')
    os.close(w)
    try:
        assert b'[redis]\nprefix = "piped"\n' == read_file(f"/dev/fd/{r}")
    finally:
        os.close(r)


def test_read_file_refuses_a_file_over_its_limit(tmp_path):
    """A file larger than the limit (a disk image named by mistake) is refused, not read into memory."""
    from apnsd.config import read_file

    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)

    assert b"x" * 11 == read_file(path, limit=11)
    with pytest.raises(OSError, match="larger than 10 bytes"):
        read_file(path, limit=10)
