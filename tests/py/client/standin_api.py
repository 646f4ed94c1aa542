"""A tiny local stand-in of the Polars Cloud control-plane API.

It answers what the real `polars-cloud` client (0.7.0 to 0.12.0) calls while it
authenticates (see docs/polars-cloud-client.md):

* ``GET /api/v1/user/me`` -> 200 with a plausible ``UserModel`` body when the
  request carries ``Authorization: Bearer <something>``, 401 otherwise.

Everything else is recorded and answered with 404.

Optionally (``token_endpoint_tls=<ssl.SSLContext>`` plus ``auth_host``) it
also plays the Keycloak token endpoint the client uses to refresh a token or
to log a service account in: a ``CONNECT <auth_host>:443`` is then accepted,
TLS-terminated with the given context (a throwaway CA the client is made to
trust with ``SSL_CERT_FILE``), and
``POST /realms/Polars/protocol/openid-connect/token`` is answered with fresh
unsigned JWTs.  Every such request is recorded in ``token_requests`` (form
fields as sent).  The device-login endpoint is always refused.

It also doubles as a *trap proxy*: the driver points ``HTTP(S)_PROXY`` /
``ALL_PROXY`` at it (with ``NO_PROXY`` covering loopback), so any attempt of
the client to reach a host outside loopback (for example the token endpoint
on ``auth.<domain>`` when it wants to refresh) arrives here as ``CONNECT
host:port`` or as an absolute-form request.  Those are recorded in
``outside`` and refused with 403, so nothing ever leaves the machine.

The server binds to 127.0.0.1 only.  Stdlib only.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

USER_ME_PATH = "/api/v1/user/me"
TOKEN_PATH = "/realms/Polars/protocol/openid-connect/token"
DEVICE_PATH = "/realms/Polars/protocol/openid-connect/auth/device"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """header.payload.signature with a junk signature (the client never verifies it)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "standin"}
    return ".".join(
        [_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
         _b64url(b"standin-signature")]
    )


class _SocketWriter:
    """Minimal write-side file object over a (TLS) socket, using sendall."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

# Shape of the client's `UserModel` (struct UserModel with 8 elements in the
# compiled extension; names from polars_cloud.pyi and the extension strings). All eight
# fields, avatar_url a string: clients up to 0.9.0 cannot decode a null there.
DEFAULT_USER: dict[str, Any] = {
    "id": "0b9b6a52-3c1e-4c59-9a7e-5b3f0b2f7a01",
    "email": "workload@example.invalid",
    "first_name": "Stand",
    "last_name": "In",
    "avatar_url": "https://example.invalid/avatar.png",
    "default_workspace_id": None,
    "newsletter_updates": False,
    "personal_emails": False,
}


def make_token_endpoint_tls(auth_host: str, workdir: str) -> tuple[ssl.SSLContext, str]:
    """Throwaway CA + server certificate for `auth_host`, made with the openssl CLI.

    Returns the server-side SSLContext for the stand-in and the path of the CA
    certificate, to hand to the client as SSL_CERT_FILE.
    """
    import subprocess
    from pathlib import Path

    d = Path(workdir)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=polars-cloud-standin-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={auth_host}")
    (d / "leaf.ext").write_text(
        f"subjectAltName=DNS:{auth_host}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "leaf.pem"), str(d / "leaf.key"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx, str(d / "ca.pem")


class StandInApi:
    """Threaded loopback HTTP server that records every request."""

    def __init__(
        self,
        *,
        user_status: int = 200,
        user_body: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_endpoint_tls: ssl.SSLContext | None = None,
        auth_host: str | None = None,
        token_lifetime: int = 3600,
        verify: "Callable[[str], str | None] | None" = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the stand-in only listens on loopback")
        self.user_status = user_status
        self.user_body = DEFAULT_USER if user_body is None else user_body
        self.requests: list[dict[str, Any]] = []
        self.outside: list[str] = []
        self.token_requests: list[dict[str, Any]] = []
        self.issued: dict[str, str] = {}  # access token -> grant that produced it
        self.token_endpoint_tls = token_endpoint_tls
        self.auth_host = auth_host
        self.token_lifetime = token_lifetime
        # bearer -> why it is not acceptable (None: accepted); without it any bearer is.
        self.verify = verify
        if (token_endpoint_tls is None) != (auth_host is None):
            raise ValueError("token_endpoint_tls and auth_host go together")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ api
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "StandInApi":
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="standin-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "StandInApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> tuple[list[dict[str, Any]], list[str]]:
        with self._lock:
            return list(self.requests), list(self.outside)

    def token_snapshot(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        with self._lock:
            return list(self.token_requests), dict(self.issued)

    def _token_response(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        if grant not in ("refresh_token", "password"):
            return 400, {"error": "unsupported_grant_type",
                         "error_description": f"stand-in does not do {grant!r}"}
        now = int(time.time())
        sub = str(uuid.uuid4())
        access = unsigned_jwt({"exp": now + self.token_lifetime, "iat": now, "sub": sub,
                               "azp": form.get("client_id"), "standin_grant": grant})
        refresh = unsigned_jwt({"exp": now + 10 * self.token_lifetime, "iat": now,
                                "sub": sub, "typ": "Refresh"})
        with self._lock:
            self.issued[access] = grant
        return 200, {"access_token": access, "refresh_token": refresh,
                     "expires_in": self.token_lifetime,
                     "refresh_expires_in": 10 * self.token_lifetime,
                     "token_type": "Bearer"}

    # -------------------------------------------------------------- handler
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "polars-cloud-standin/0"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep stdout/stderr clean for the driver's JSON line

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n > 0 else b""

            def _outside(self, target: str) -> None:
                with api._lock:
                    api.outside.append(f"{self.command} {target}")
                self.close_connection = True
                self._send(403, {"error": "stand-in: no network outside loopback"})

            tunnel_host: str | None = None

            def do_CONNECT(self) -> None:  # noqa: N802
                host, _, port = self.path.rpartition(":")
                if (api.token_endpoint_tls is None or self.tunnel_host is not None
                        or host != api.auth_host or port != "443"):
                    self._outside(self.path)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                try:
                    tls = api.token_endpoint_tls.wrap_socket(self.connection, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    with api._lock:
                        api.outside.append(f"TLS handshake for {self.path} failed: {exc}")
                    self.close_connection = True
                    return
                # Go on serving HTTP inside the tunnel on this same handler.
                self.connection = tls
                self.rfile = tls.makefile("rb", -1)
                self.wfile = _SocketWriter(tls)
                self.tunnel_host = host
                self.close_connection = False

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    if self.tunnel_host is not None:
                        self.connection.close()

            def _handle_tunnel(self, body: bytes) -> None:
                from urllib.parse import parse_qsl

                path = self.path.split("?", 1)[0]
                form = dict(parse_qsl(body.decode("utf-8", "replace")))
                with api._lock:
                    api.token_requests.append(
                        {"host": self.tunnel_host, "method": self.command, "path": path,
                         "content_type": self.headers.get("Content-Type"), "form": form,
                         "user_agent": self.headers.get("User-Agent"),
                         "client_version": self.headers.get("x-client-version")}
                    )
                if self.command == "POST" and path == TOKEN_PATH:
                    self._send(*api._token_response(form))
                elif path == DEVICE_PATH:
                    self._send(400, {"error": "invalid_request",
                                     "error_description": "no interactive login here"})
                else:
                    self._send(404, {"error": f"stand-in does not serve {path}"})

            def _handle(self) -> None:
                body = self._read_body()
                if self.tunnel_host is not None:
                    self._handle_tunnel(body)
                    return
                if not self.path.startswith("/"):
                    # absolute-form request: it came through us as a proxy
                    self._outside(self.path)
                    return
                auth = self.headers.get("Authorization")
                with api._lock:
                    api.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "authorization": auth,
                            "user_agent": self.headers.get("User-Agent"),
                            "body": body.decode("utf-8", "replace"),
                        }
                    )
                path = self.path.split("?", 1)[0]
                if self.command == "GET" and path == USER_ME_PATH:
                    if not auth or not auth.startswith("Bearer ") or auth == "Bearer ":
                        self._send(401, {"error": "missing bearer token"})
                    elif api.verify is not None and (why := api.verify(auth[7:])):
                        self._send(401, {"error": f"bearer refused: {why}"})
                    else:
                        self._send(api.user_status, api.user_body)
                    return
                self._send(404, {"error": f"stand-in does not serve {path}"})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler


if __name__ == "__main__":  # manual use: python standin_api.py
    import time

    with StandInApi() as s:
        print(s.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
