"""A tiny local stand-in of the Polars Cloud control-plane API.

It answers what the real `polars-cloud` 0.12.0 client calls while it
authenticates (see docs/polars-cloud-client.md):

* ``GET /api/v1/user/me`` -> 200 with a plausible ``UserModel`` body when the
  request carries ``Authorization: Bearer <something>``, 401 otherwise.

Everything else is recorded and answered with 404.

It also doubles as a *trap proxy*: the driver points ``HTTP(S)_PROXY`` /
``ALL_PROXY`` at it (with ``NO_PROXY`` covering loopback), so any attempt of
the client to reach a host outside loopback (for example the token endpoint
on ``auth.<domain>`` when it wants to refresh) arrives here as ``CONNECT
host:port`` or as an absolute-form request.  Those are recorded in
``outside`` and refused with 403, so nothing ever leaves the machine.

The server binds to 127.0.0.1 only.  Stdlib only.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USER_ME_PATH = "/api/v1/user/me"

# Shape of the client's `UserModel` (struct UserModel with 8 elements in the
# compiled extension; names from polars_cloud.pyi and the extension strings).
DEFAULT_USER: dict[str, Any] = {
    "id": "0b9b6a52-3c1e-4c59-9a7e-5b3f0b2f7a01",
    "email": "workload@example.invalid",
    "first_name": "Stand",
    "last_name": "In",
    "avatar_url": None,
    "default_workspace_id": None,
    "newsletter_updates": False,
    "personal_emails": False,
}


class StandInApi:
    """Threaded loopback HTTP server that records every request."""

    def __init__(
        self,
        *,
        user_status: int = 200,
        user_body: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the stand-in only listens on loopback")
        self.user_status = user_status
        self.user_body = DEFAULT_USER if user_body is None else user_body
        self.requests: list[dict[str, Any]] = []
        self.outside: list[str] = []
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

            def do_CONNECT(self) -> None:  # noqa: N802
                self._outside(self.path)

            def _handle(self) -> None:
                body = self._read_body()
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
