"""The running test Keycloak (scripts/keycloak.sh start), for Python suites.

`scripts/test.sh --slow` starts one Keycloak per suite block and exports its URL and admin
credentials; this module reads them and offers the few admin calls a suite needs (standard
library only). By hand:

    eval "$(scripts/keycloak.sh start)"
    .venv/bin/python -c 'import sys; sys.path.insert(0, "tests/py"); import keycloak_peer as k; print(k.peer().issuer)'

In pytest::

    import keycloak_peer
    kc = keycloak_peer.peer_or_skip()       # skips when no Keycloak was started
    kc.reset()                              # realm back to its baseline
    kc.realm({"accessTokenLifespan": 10})   # per-test settings
    env = kc.service_account_env()          # POLARS_CLOUD_ISSUER / _CLIENT_ID / _CLIENT_SECRET

The realm is tests/keycloak/realm-polars.json: public client PolarsCloud (password and
device grants), service account `test-sa` (user test-sa@sa.cloud.pola.rs), confidential
client `ci-client` for client_credentials, person `alice` for the device flow.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

URL = "POLARS_CLOUD_AUTH_KEYCLOAK_URL"
ADMIN = "POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN"
ADMIN_PASSWORD = "POLARS_CLOUD_AUTH_KEYCLOAK_ADMIN_PASSWORD"

SA_ID = "test-sa"
SA_SECRET = "s3cr3t-Zq8vXw-never-print-me"
SA_USER = f"{SA_ID}@sa.cloud.pola.rs"
CI_CLIENT = "ci-client"
CI_SECRET = "ci-s3cr3t-Zq8vXw-never-print-me"

# What every test starts from (the realm file's values).
BASELINE = {
    "accessTokenLifespan": 20,
    "ssoSessionIdleTimeout": 300,
    "ssoSessionMaxLifespan": 600,
    "bruteForceProtected": False,
    "permanentLockout": False,
    "failureFactor": 3,
    "quickLoginCheckMilliSeconds": 1000,
    "minimumQuickLoginWaitSeconds": 60,
    "waitIncrementSeconds": 60,
    "eventsEnabled": True,
}


@dataclass
class Keycloak:
    base_url: str
    admin_user: str
    admin_password: str

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/Polars"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    def service_account_env(self) -> dict[str, str]:
        """The environment polars-cloud-auth (and polars-cloud) need for `test-sa`."""
        return {
            "POLARS_CLOUD_ISSUER": self.issuer,
            "POLARS_CLOUD_CLIENT_ID": SA_ID,
            "POLARS_CLOUD_CLIENT_SECRET": SA_SECRET,
        }

    def token(self, form: dict[str, str], realm: str = "Polars") -> dict:
        """A token request straight to the realm; the JSON reply (raises on non-2xx)."""
        url = f"{self.base_url}/realms/{realm}/protocol/openid-connect/token"
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return json.load(r)

    def service_account_tokens(self) -> dict:
        """A password grant for `test-sa` on PolarsCloud, as the real client sends it."""
        return self.token(
            {
                "grant_type": "password",
                "client_id": "PolarsCloud",
                "username": SA_USER,
                "password": SA_SECRET,
            }
        )

    def admin_token(self) -> str:
        reply = self.token(
            {
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": self.admin_user,
                "password": self.admin_password,
            },
            realm="master",
        )
        return reply["access_token"]

    def admin(self, method: str, path: str, body: object | None = None):
        """An admin REST call under /admin/realms/Polars; the JSON reply or None."""
        request = urllib.request.Request(
            f"{self.base_url}/admin/realms/Polars{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.admin_token()}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else None

    def realm(self, settings: dict) -> None:
        """Changes realm settings (a partial representation)."""
        self.admin("PUT", "", settings)

    def user_id(self, username: str) -> str:
        q = urllib.parse.urlencode({"exact": "true", "username": username})
        return self.admin("GET", f"/users?{q}")[0]["id"]

    def reset(self) -> None:
        """The realm back at its baseline: settings, no sessions, no brute-force locks."""
        self.realm(BASELINE)
        client = self.admin("GET", "/clients?clientId=PolarsCloud")[0]
        self.admin(
            "PUT",
            f"/clients/{client['id']}",
            {"clientId": "PolarsCloud", "directAccessGrantsEnabled": True},
        )
        self.admin("PUT", f"/users/{self.user_id(SA_USER)}", {"enabled": True})
        self.admin("DELETE", "/attack-detection/brute-force/users")
        self.admin("POST", "/logout-all")


def peer() -> Keycloak:
    """The running Keycloak; raises when scripts/keycloak.sh start has not been run."""
    missing = [v for v in (URL, ADMIN, ADMIN_PASSWORD) if not os.environ.get(v)]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not set: run `eval \"$(scripts/keycloak.sh start)\"` "
            "or scripts/test.sh --slow"
        )
    return Keycloak(
        os.environ[URL].rstrip("/"), os.environ[ADMIN], os.environ[ADMIN_PASSWORD]
    )


def peer_or_skip() -> Keycloak:
    """The running Keycloak, or a pytest skip saying how to get one."""
    import pytest

    try:
        return peer()
    except RuntimeError as e:
        pytest.skip(f"needs Keycloak: {e}")
