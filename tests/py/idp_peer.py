"""The test identity provider (tests/idp/server.mjs, node-oidc-provider shaped like
Keycloak's Polars realm) as a process for the Python suites: started on a free loopback
port (or inside a pod's network namespace), with its request log at /__test/requests."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Idp:
    def __init__(self, accounts: dict[str, str], ttl: int, session_max: int | None = None,
                 net: Any = None, host: str | None = None,
                 tls: dict[str, Path] | None = None) -> None:
        """`host` and `tls` (cluster.make_tls's files): listen on that address over https,
        as the real node's pods reach it on the node's bridge."""
        env = dict(os.environ)
        if host:
            env["IDP_HOST"] = host
        if tls:
            env.update(IDP_TLS_CERT=str(tls["cert"]), IDP_TLS_KEY=str(tls["key"]))
        self.tls = tls
        env.update(IDP_TOKEN_TTL=str(ttl),
                   IDP_SERVICE_ACCOUNTS=",".join(f"{k}:{v}" for k, v in accounts.items()))
        if session_max is not None:
            env.update(IDP_SESSION_MAX=str(session_max), IDP_REFRESH_TTL=str(session_max))
        self.net = net
        argv = ["node", str(ROOT / "tests" / "idp" / "server.mjs")]
        popen = net.popen if net is not None else subprocess.Popen
        self.proc = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.issuer: str = ready["issuer"]
        self.port: int = ready["port"]

    def requests(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/__test/requests"
        if self.tls is not None:
            import ssl

            url = self.issuer.split("/realms/")[0] + "/__test/requests"
            context = ssl.create_default_context(cafile=str(self.tls["ca"]))
            with urllib.request.urlopen(url, context=context) as r:
                body = json.load(r)
        elif self.net is not None:
            body = json.loads(self.net.run(["curl", "-sf", url]).stdout)
        else:
            with urllib.request.urlopen(url) as r:
                body = json.load(r)
        return body["requests"] if isinstance(body, dict) else body

    def jwks(self) -> str:
        """The IdP's signing keys (JWKS JSON), for a verifier that cannot reach it."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.tls["ca"])) if self.tls else None
        url = self.issuer + "/protocol/openid-connect/certs"
        with urllib.request.urlopen(url, context=context, timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
