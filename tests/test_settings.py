"""Settings: YAML with file/line/key errors, env vars and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth.scram import make_verifier
from proxy.config.settings import load_settings
from proxy.config.yamlsource import ConfigError

VERIFIER = str(make_verifier("pw", 16))


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    return str(path)


def test_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", "from-env")
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    path = _write(tmp_path, f"""
listen: 0.0.0.0:7000
upstream:
  url: postgresql://db.internal:5433/appdb?sslmode=require
  passwords:
    app: {{env: APP_DB_PASSWORD}}
    report: {{file: {secret}}}
auth:
  method: scram-sha-256
  users:
    app: "{VERIFIER}"
limits:
  login_timeout: 3
  max_message_size: 1048576
""")
    s = load_settings(path, env={})
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 7000)
    up = s.upstream
    assert (up.host, up.port, up.database, up.sslmode) == ("db.internal", 5433, "appdb",
                                                           "require")
    assert up.password_for("app") == "from-env" and up.password_for("report") == "from-file"
    assert str(s.auth.users["app"]) == VERIFIER
    assert s.limits.login_timeout == 3.0 and s.limits.max_message_size == 1048576


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "listen: 127.0.0.1:7000\n")
    env = {"TENANT_PROXY_LISTEN": "127.0.0.1:7001",
           "TENANT_PROXY_UPSTREAM": "postgresql://u:p@h:1/d"}
    assert load_settings(path, env=env).listen_port == 7001
    s = load_settings(path, listen="127.0.0.1:7002", env=env)
    assert s.listen_port == 7002
    assert (s.upstream.host, s.upstream.user, s.upstream.password) == ("h", "u", "p")
    assert load_settings(None, env={"TENANT_PROXY_CONFIG": path}).listen_port == 7000


@pytest.mark.parametrize("text,expected", [
    ("upstream:\n  port: fivefour\n", r"proxy.yaml:2: upstream.port: expected int, got str"),
    ("upstream:\n  prot: 1\n", r"proxy.yaml:2: upstream.prot: unknown key"),
    ("auth:\n  users:\n    app: hunter2\n",
     r"proxy.yaml:3: auth.users.app: not a SCRAM-SHA-256 verifier.*tenant-proxy passwd"),
    ("tls:\n  mode: require\n", r"proxy.yaml:2: tls.mode: mode require needs tls.cert"),
    ("limits:\n  login_timeout: -1\n", r"proxy.yaml:2: limits.login_timeout: must be positive"),
    ("upstream:\n  sslmode: sometimes\n", r"proxy.yaml:2: upstream.sslmode: 'sometimes' is not"),
    ("upstream:\n  password: {env: NOPE_NOT_SET}\n",
     r"proxy.yaml:2: upstream.password: environment variable NOPE_NOT_SET is not set"),
    ("listen: [1, 2\n", r"proxy.yaml:2: invalid YAML"),
    ("a: 1\na: 2\n", r"proxy.yaml: line 2: duplicate key a"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(_write(tmp_path, text), env={})
