"""Prove the real-consumer harness (tests/py/client/) is honest.

Every test runs tests/py/client/check_client.py as a subprocess, the way the
Rust tests do, with a workload-like environment built in a temp dir, and
with locally crafted *unsigned* JWTs.  The expectations are what the real
polars-cloud 0.12.0 client does (docs/polars-cloud-client.md), including the
cases where it refuses a token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHECK = HERE / "client" / "check_client.py"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(exp_in: int | None = 3600, **claims: object) -> str:
    """header.payload.signature, base64url without padding; signature is junk."""
    payload: dict[str, object] = dict(claims)
    if exp_in is not None:
        payload["exp"] = int(time.time()) + exp_in
    header = {"alg": "RS256", "typ": "JWT", "kid": "harness"}
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
         b64url(b"not-a-real-signature")]
    )


def auth_toml(access: str | None, refresh: str | None) -> str:
    lines = ["[auth]"]
    if access is not None:
        lines.append(f'access_token = "{access}"')
    if refresh is not None:
        lines.append(f'refresh_token = "{refresh}"')
    return "\n".join(lines) + "\n"


@pytest.fixture
def workload_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no POLARS_CLOUD_* or proxy settings, HOME in tmp."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("POLARS_CLOUD_")
        and k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        and k != "XDG_CONFIG_HOME"
    }
    home = tmp_path / "home"
    home.mkdir()
    env["HOME"] = str(home)
    return env


def check(env: dict[str, str], *args: str, timeout: float = 40) -> tuple[dict, int, str]:
    proc = subprocess.run(
        [sys.executable, str(CHECK), *args], env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected ONE JSON line on stdout, got {proc.stdout!r}\n{proc.stderr}"
    result = json.loads(lines[0])
    assert result["ok"] is (proc.returncode == 0), result
    return result, proc.returncode, proc.stderr


# ---------------------------------------------------------------- env var


def test_env_token_is_sent_as_bearer(workload_env):
    token = make_jwt(3600, sub="workload")
    workload_env["POLARS_CLOUD_ACCESS_TOKEN"] = token
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert result["bearer"] == token
    assert result["source"] == "env"
    assert result["paths"] == ["/api/v1/user/me"]
    assert result["outside"] == []


def test_env_token_expired_is_refused_before_any_request(workload_env):
    workload_env["POLARS_CLOUD_ACCESS_TOKEN"] = make_jwt(-60)
    result, rc, _ = check(workload_env)
    assert rc == 1
    assert "expired" in result["error"]
    assert result["paths"] == [] and result["outside"] == []


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (make_jwt(None, sub="x"), "Expiration missing"),  # no exp claim
        (make_jwt(None, exp="9999999999"), "Expiration missing"),  # exp must be an integer
        ("not-a-jwt", "No payload"),
    ],
)
def test_env_token_without_usable_exp_is_refused(workload_env, token, why):
    workload_env["POLARS_CLOUD_ACCESS_TOKEN"] = token
    result, rc, _ = check(workload_env)
    assert rc == 1
    assert why in result["error"]
    assert result["paths"] == []


def test_env_token_signature_and_audience_are_not_checked(workload_env):
    # Junk signature, foreign audience/issuer: the client only reads `exp`.
    token = make_jwt(3600, aud="someone-else", iss="https://issuer.invalid")
    workload_env["POLARS_CLOUD_ACCESS_TOKEN"] = token
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert result["bearer"] == token


def test_env_token_wins_over_config(workload_env, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.toml").write_text(auth_toml(make_jwt(3600, which="config"), make_jwt(86400)))
    env_token = make_jwt(3600, which="env")
    workload_env.update(POLARS_CLOUD_CONFIG_DIR=str(cfg), POLARS_CLOUD_ACCESS_TOKEN=env_token)
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert (result["bearer"], result["source"]) == (env_token, "env")


# ------------------------------------------------------------- config.toml


def test_config_toml_access_and_refresh_token(workload_env, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    access = make_jwt(3600, which="config")
    (cfg / "config.toml").write_text(auth_toml(access, make_jwt(86400, typ="Refresh")))
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert (result["bearer"], result["source"]) == (access, "config")


def test_config_toml_in_default_dir(workload_env):
    cfg = Path(workload_env["HOME"]) / ".config" / "polars_cloud"
    cfg.mkdir(parents=True)
    access = make_jwt(3600)
    (cfg / "config.toml").write_text(auth_toml(access, make_jwt(86400)))
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert (result["bearer"], result["source"]) == (access, "config")


def test_config_toml_access_token_alone_is_not_found(workload_env, tmp_path):
    # 0.12 only loads [auth] from config.toml when BOTH tokens are present.
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.toml").write_text(auth_toml(make_jwt(3600), None))
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    started = time.monotonic()
    result, rc, _ = check(workload_env)
    assert rc == 1
    assert "Authentication token was not found" in result["error"]
    assert time.monotonic() - started < 10


def test_config_toml_expired_access_token_goes_to_token_endpoint(workload_env, tmp_path):
    # The client refreshes at https://auth.<domain>/...; the harness must block
    # that (no network outside loopback) and report failure.
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.toml").write_text(auth_toml(make_jwt(-60), make_jwt(86400)))
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    result, rc, _ = check(workload_env, "--timeout", "3")
    assert rc == 1
    assert result["outside"], result
    assert all(o.startswith("CONNECT auth.") for o in result["outside"]), result
    assert result["paths"] == []


# -------------------------------------------------------------- token files


def test_legacy_token_files_in_config_dir_are_migrated_and_used(workload_env, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    access = make_jwt(3600, which="legacy")
    (cfg / "cloud_access_token").write_text(access + "\n")
    (cfg / "cloud_refresh_token").write_text(make_jwt(86400) + "\n")
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert (result["bearer"], result["source"]) == (access, "file")
    # the client moved them into config.toml and deleted the files
    assert not (cfg / "cloud_access_token").exists()
    assert access in (cfg / "config.toml").read_text()


def test_access_token_path_and_dot_polars_file_are_not_read(workload_env, tmp_path):
    token = make_jwt(3600)
    tokfile = tmp_path / "token"
    tokfile.write_text(token)
    dot_polars = Path(workload_env["HOME"]) / ".polars"
    dot_polars.mkdir()
    (dot_polars / "cloud_access_token").write_text(token)
    workload_env["POLARS_CLOUD_ACCESS_TOKEN_PATH"] = str(tokfile)
    result, rc, _ = check(workload_env)
    assert rc == 1
    assert "Authentication token was not found" in result["error"]
    assert any("POLARS_CLOUD_ACCESS_TOKEN_PATH" in w for w in result.get("warnings", []))


# ------------------------------------------------------ harness guarantees


def test_no_token_fails_fast_without_login(workload_env):
    started = time.monotonic()
    result, rc, stderr = check(workload_env, timeout=15)
    assert rc == 1
    assert "Authentication token was not found" in result["error"]
    assert result["outside"] == [] and result["paths"] == []
    assert "browser" not in stderr.lower()
    assert time.monotonic() - started < 10


def test_api_rejecting_the_token_is_reported(workload_env):
    workload_env["POLARS_CLOUD_ACCESS_TOKEN"] = make_jwt(3600)
    result, rc, _ = check(workload_env, "--user-status", "401")
    assert rc == 1
    assert result["paths"] == ["/api/v1/user/me"]


def test_caller_api_addr_is_overridden_to_loopback(workload_env):
    token = make_jwt(3600)
    workload_env.update(POLARS_CLOUD_ACCESS_TOKEN=token,
                        POLARS_CLOUD_API_ADDR="https://api.example.invalid")
    result, rc, _ = check(workload_env)
    assert rc == 0, result
    assert result["bearer"] == token and result["outside"] == []


# ------------------------------------------- token endpoint (--token-endpoint)


def test_refresh_of_expired_config_token_uses_our_refresh_token(workload_env, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    refresh = make_jwt(86400, typ="Refresh", which="ours")
    (cfg / "config.toml").write_text(auth_toml(make_jwt(-60), refresh))
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    result, rc, _ = check(workload_env, "--token-endpoint")
    assert rc == 0, result
    assert result["source"] == "refresh"
    [req] = result["token_requests"]
    assert req["host"] == "auth.prd.cloud.pola.rs"
    assert req["path"] == "/realms/Polars/protocol/openid-connect/token"
    assert req["form"] == {"client_id": "PolarsCloud", "grant_type": "refresh_token",
                           "refresh_token": refresh}
    # the client persisted the new pair
    assert result["bearer"] in (cfg / "config.toml").read_text()


def test_refresh_token_must_be_an_unexpired_jwt(workload_env, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.toml").write_text(auth_toml(make_jwt(-60), "opaque-refresh-token"))
    workload_env["POLARS_CLOUD_CONFIG_DIR"] = str(cfg)
    result, rc, _ = check(workload_env, "--token-endpoint")
    assert rc == 1
    assert result["token_requests"] == []
    (cfg / "config.toml").write_text(auth_toml(make_jwt(-60), make_jwt(-5)))
    result, rc, _ = check(workload_env, "--token-endpoint")
    assert rc == 1
    assert "refresh token has expired" in result["error"]
    assert result["token_requests"] == []


def test_service_account_login(workload_env, tmp_path):
    workload_env.update(POLARS_CLOUD_CONFIG_DIR=str(tmp_path / "cfg"),
                        POLARS_CLOUD_CLIENT_ID="sa-client", POLARS_CLOUD_CLIENT_SECRET="sa-secret",
                        POLARS_CLOUD_DOMAIN="example.test")
    result, rc, _ = check(workload_env, "--token-endpoint")
    assert rc == 0, result
    assert result["source"] == "service_account"
    [req] = result["token_requests"]
    assert req["host"] == "auth.example.test"
    assert req["form"] == {"client_id": "PolarsCloud", "grant_type": "password",
                           "username": "sa-client@sa.cloud.pola.rs", "password": "sa-secret"}


def test_service_account_without_token_endpoint_stays_on_loopback(workload_env, tmp_path):
    workload_env.update(POLARS_CLOUD_CONFIG_DIR=str(tmp_path / "cfg"),
                        POLARS_CLOUD_CLIENT_ID="sa-client", POLARS_CLOUD_CLIENT_SECRET="sa-secret")
    result, rc, _ = check(workload_env, "--timeout", "3")
    assert rc == 1
    assert result["outside"] and all(o.startswith("CONNECT auth.") for o in result["outside"])
