#!/usr/bin/env python3
"""`exec`'s relay under another local user: junk, slow bodies, descriptor exhaustion.

Starts `polars-cloud-auth exec` (release build, or BIN=path) under `prlimit --nofile=1024`
(the soft limit of the issue's run) with a token file and a command that only sleeps, then
attacks its CONNECT proxy and relay on loopback as any local user could, and prints, as
JSON lines:

  1. baseline: the time of one valid refresh (CONNECT, TLS, POST), as the client does it;
  2. junk: JUNK (400) complete requests with a foreign handle, all sent before one valid
     refresh; that refresh's time, and how the junk was answered;
  3. aborted slow bodies: 200 requests whose body stops, held, then aborted; the time of
     a valid refresh right after;
  4. under a junk flood: 8 attacker threads sending junk for FLOOD (20) seconds while a
     client refreshes in a loop; refreshes answered per minute, junk answered;
  5. descriptors: HELD (1100) slow-body connections attempted and held; how many the
     relay kept, exec's open descriptors, "accept failed" lines in its log, a valid
     refresh's time meanwhile, and the held ones still open after the body deadline.

Only loopback is ever targeted. Python standard library only. Never asserts: figures go
into docs/security.md.
"""
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH_HOST = "auth.polars-cloud-auth.internal"
TOKEN_PATH = "/realms/Polars/protocol/openid-connect/token"
JUNK = int(os.environ.get("JUNK", "400"))
HELD = int(os.environ.get("HELD", "1100"))
FLOOD = float(os.environ.get("FLOOD", "20"))


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "polars-cloud-auth")


def token_file(work):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    jwt = enc(b'{"alg":"RS256","typ":"JWT"}') + "." + enc(json.dumps({"exp": time.time() + 3600}).encode()) + ".c2ln"
    path = os.path.join(work, "token")
    with open(path, "w") as f:
        f.write(jwt)
    return path


class Relay:
    def __init__(self, proxy, bundle, config_dir):
        host, port = proxy.replace("http://", "").rsplit(":", 1)
        self.proxy = (host, int(port))
        with open(bundle) as f:
            text = f.read()
        ca = text[text.rindex("-----BEGIN CERTIFICATE-----"):]
        self.ctx = ssl.create_default_context(cadata=ca)
        with open(os.path.join(config_dir, "cloud_refresh_token")) as f:
            self.handle = f.read()

    def connect(self, timeout=30):
        raw = socket.create_connection(self.proxy, timeout=timeout)
        raw.sendall(f"CONNECT {AUTH_HOST}:443 HTTP/1.1\r\nhost: {AUTH_HOST}:443\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = raw.recv(1)
            if not b:
                raise ConnectionError("the proxy closed the connection")
            head += b
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head)
        return self.ctx.wrap_socket(raw, server_hostname=AUTH_HOST)

    def send(self, form, timeout=30):
        s = self.connect(timeout)
        s.sendall((f"POST {TOKEN_PATH} HTTP/1.1\r\nhost: {AUTH_HOST}\r\n"
                   f"content-type: application/x-www-form-urlencoded\r\ncontent-length: {len(form)}\r\n"
                   f"connection: close\r\n\r\n{form}").encode())
        return s

    @staticmethod
    def status(s):
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ssl.SSLError, OSError):
            pass
        finally:
            s.close()
        try:
            return int(data.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None

    def refresh(self, timeout=120):
        form = f"client_id=PolarsCloud&grant_type=refresh_token&refresh_token={self.handle}"
        return self.status(self.send(form, timeout))

    def timed_refresh(self, limit=120):
        """Seconds until a valid refresh is answered 200, retrying closed connections."""
        t = time.monotonic()
        attempts = 0
        while time.monotonic() - t < limit:
            attempts += 1
            try:
                if self.refresh(timeout=limit) == 200:
                    return {"s": round(time.monotonic() - t, 3), "attempts": attempts}
            except OSError:
                time.sleep(0.1)
        return {"s": None, "attempts": attempts}

    def slow_body(self):
        s = self.connect(timeout=5)
        s.sendall((f"POST {TOKEN_PATH} HTTP/1.1\r\nhost: {AUTH_HOST}\r\n"
                   f"content-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\n"
                   f"grant_type=refresh").encode())
        return s


JUNK_FORM = "grant_type=refresh_token&refresh_token=junk"


def still_open(s):
    s.setblocking(False)
    try:
        while True:
            if s.recv(65536) == b"":
                return False
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except (OSError, ssl.SSLError):
        return False


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    bin_path = binary()
    with tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("POLARS_CLOUD") and not k.upper().endswith("_PROXY")}
        env["XDG_RUNTIME_DIR"] = work
        log_path = os.path.join(work, "exec.log")
        log = open(log_path, "w")
        child = 'echo "$HTTPS_PROXY $SSL_CERT_FILE $POLARS_CLOUD_CONFIG_DIR"; exec sleep 3600'
        proc = subprocess.Popen(["prlimit", "--nofile=1024", bin_path, "exec", "--token-file", token_file(work),
                                 "--", "sh", "-c", child], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            proxy, bundle, config_dir = proc.stdout.readline().split()
            relay = Relay(proxy, bundle, config_dir)
            print(json.dumps({"binary": bin_path, "scenario": "baseline", "refresh": relay.timed_refresh()}), flush=True)

            conns = []
            for _ in range(JUNK):
                try:
                    conns.append(relay.send(JUNK_FORM))
                except OSError:
                    pass
            refresh = relay.timed_refresh()
            codes = {}
            for s in conns:
                c = str(Relay.status(s))
                codes[c] = codes.get(c, 0) + 1
            print(json.dumps({"scenario": f"{JUNK} junk requests sent before one valid refresh",
                              "sent": len(conns), "refresh": refresh, "junk_answers": codes}), flush=True)

            slow = []
            for _ in range(200):
                try:
                    slow.append(relay.slow_body())
                except OSError:
                    pass
            time.sleep(0.5)
            for s in slow:
                s.close()
            print(json.dumps({"scenario": "200 slow bodies held, then aborted; one valid refresh",
                              "held": len(slow), "refresh": relay.timed_refresh()}), flush=True)

            stop = time.monotonic() + FLOOD
            junk_done = [0]
            lock = threading.Lock()

            def attacker():
                while time.monotonic() < stop:
                    try:
                        Relay.status(relay.send(JUNK_FORM, timeout=10))
                        with lock:
                            junk_done[0] += 1
                    except OSError:
                        pass

            threads = [threading.Thread(target=attacker) for _ in range(8)]
            for t in threads:
                t.start()
            served = 0
            t0 = time.monotonic()
            while time.monotonic() < stop:
                try:
                    if relay.refresh(timeout=30) == 200:
                        served += 1
                except OSError:
                    pass
            took = time.monotonic() - t0
            for t in threads:
                t.join()
            print(json.dumps({"scenario": f"8 threads of junk for {FLOOD:.0f} s, a client refreshing in a loop",
                              "refreshes_per_min": round(served * 60 / took), "junk_answered": junk_done[0]}),
                  flush=True)

            before = fds(proc.pid)
            held = []
            refused = 0
            t0 = time.monotonic()
            for _ in range(HELD):
                try:
                    held.append(relay.slow_body())
                except OSError:
                    refused += 1
            opened_in = time.monotonic() - t0
            during = fds(proc.pid)
            refresh = relay.timed_refresh()
            time.sleep(12)
            still = sum(1 for s in held if still_open(s))
            with open(log_path) as f:
                accept_failed = f.read().count("accept failed")
            print(json.dumps({"scenario": f"{HELD} slow-body connections attempted (exec at 1024 descriptors)",
                              "held_by_relay": len(held), "closed_at_once": refused,
                              "attack_s": round(opened_in, 1), "exec_fds_before": before,
                              "exec_fds_during": during, "refresh_meanwhile": refresh,
                              "still_open_12s_later": still, "exec_fds_after": fds(proc.pid),
                              "accept_failed_lines": accept_failed}), flush=True)
            for s in held:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
