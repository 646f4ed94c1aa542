#!/usr/bin/env python3
"""The admission webhook under hostile and heavy clients: memory and connections.

Starts `polars-cloud-auth webhook` on 127.0.0.1 (release build, or BIN=path) with a fresh
certificate (openssl) and prints, as JSON lines:

  1. stalled bodies: 30 connections each sending a 3 MiB review but the last byte, held
     open; RSS (VmRSS, peak VmHWM) sampled while they hang, /healthz latency meanwhile,
     and how many of them the webhook still holds after each few seconds;
  2. idle connections: IDLE (300) TLS connections that send nothing after the handshake;
     the open-connection count over time (from the client's side), and /healthz;
  3. large reviews: 16 concurrent clients posting a ~2.5 MiB many-container pod review,
     ROUNDS rounds; peak RSS and RSS afterwards.

Only loopback is ever targeted. Python standard library only. Figures go into
docs/benchmarks.md, section "Webhook under hostile clients". Never asserts timings.
"""
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
SVC = "pca-polars-cloud-auth.polars-cloud-system.svc"
PORT = int(os.environ.get("PORT", "18444"))
IDLE = int(os.environ.get("IDLE", "300"))
ROUNDS = int(os.environ.get("ROUNDS", "10"))
WATCH = float(os.environ.get("WATCH", "40"))


def sh(*args, cwd=None):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pki(work):
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=work)
    sh("openssl", "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=bench CA", "-days", "1", "-out", "ca.crt", cwd=work)
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "tls.key", cwd=work)
    sh("openssl", "req", "-new", "-key", "tls.key", "-subj", f"/CN={SVC}", "-out", "tls.csr", cwd=work)
    with open(os.path.join(work, "ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{SVC}\n")
    sh("openssl", "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-days", "1", "-extfile", "ext", "-out", "tls.crt", cwd=work)


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "polars-cloud-auth")


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = round(int(v.split()[0]) / 1024, 1)
    return out


class Client:
    def __init__(self, work):
        self.ctx = ssl.create_default_context(cafile=os.path.join(work, "ca.crt"))

    def connect(self, alpn="http/1.1", timeout=10):
        ctx = self.ctx
        ctx.set_alpn_protocols([alpn])
        raw = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
        return ctx.wrap_socket(raw, server_hostname=SVC)

    def request(self, method, path, body=b"", timeout=10):
        s = self.connect(timeout=timeout)
        try:
            head = f"{method} {path} HTTP/1.1\r\nhost: {SVC}\r\ncontent-type: application/json\r\n" \
                   f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            s.sendall(head.encode() + body)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return int(data.split(b" ", 2)[1]), data
        finally:
            s.close()

    def healthz_ms(self):
        t = time.monotonic()
        try:
            code, _ = self.request("GET", "/healthz", timeout=5)
        except OSError:
            return None
        return round((time.monotonic() - t) * 1000, 1) if code == 200 else None


def still_open(s):
    """True while the server has not closed the connection (reads what it sent)."""
    s.setblocking(False)
    try:
        while True:
            if s.recv(65536) == b"":
                return False
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except (OSError, ssl.SSLError):
        return False
    finally:
        s.setblocking(True)


def watch(pid, client, conns, label):
    """Samples RSS, healthz and the held connections for WATCH seconds."""
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < WATCH:
        alive = [c for c in conns if c[1]]
        for c in alive:
            if not still_open(c[0]):
                c[1] = False
        samples.append({
            "t": round(time.monotonic() - start), **status(pid),
            "open": sum(1 for c in conns if c[1]), "healthz_ms": client.healthz_ms(),
        })
        time.sleep(5)
    print(json.dumps({"scenario": label, "samples": samples}), flush=True)
    for c in conns:
        try:
            c[0].close()
        except OSError:
            pass


def stalled_bodies(pid, client):
    size = 3 * 1024 * 1024
    review = b" " * (size - 1)
    conns = []
    for _ in range(30):
        try:
            s = client.connect()
            s.sendall(f"POST /mutate HTTP/1.1\r\nhost: {SVC}\r\ncontent-type: application/json\r\n"
                      f"content-length: {size}\r\n\r\n".encode())
            s.settimeout(0.5)
            try:
                s.sendall(review)
            except (socket.timeout, OSError):
                pass  # the server stopped reading: that is the point
            s.settimeout(10)
            conns.append([s, True])
        except OSError:
            pass
    watch(pid, client, conns, "30 connections, each 3 MiB body minus one byte, held")


def idle_connections(pid, client):
    conns = []
    for _ in range(IDLE):
        try:
            conns.append([client.connect(alpn="h2" if len(conns) % 2 else "http/1.1"), True])
        except OSError:
            pass
    watch(pid, client, conns, f"{IDLE} TLS connections silent after the handshake (half h2)")


def large_reviews(pid, client):
    with open(os.path.join(ROOT, "tests/data/admission/create-pod.json")) as f:
        review = json.load(f)
    base = review["request"]["object"]["spec"]["containers"][0]
    containers = []
    for i in range(600):
        c = json.loads(json.dumps(base))
        c["name"] = f"c{i}"
        c["env"] = [{"name": f"VAR_{j}", "value": "x" * 120} for j in range(30)]
        containers.append(c)
    review["request"]["object"]["spec"]["containers"] = containers
    body = json.dumps(review).encode()
    before = status(pid)
    codes = {}
    lock = threading.Lock()

    def worker():
        for _ in range(ROUNDS):
            try:
                code, _ = client.request("POST", "/mutate", body, timeout=30)
            except OSError as e:
                code = type(e).__name__
            with lock:
                codes[str(code)] = codes.get(str(code), 0) + 1

    t = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    time.sleep(2)
    print(json.dumps({
        "scenario": f"16 concurrent {len(body) / 1048576:.2f} MiB reviews ({len(containers)} containers), {ROUNDS} rounds",
        "before": before, "after": status(pid), "answers": codes,
        "reviews_per_s": round(16 * ROUNDS / took, 1),
    }), flush=True)


def main():
    bin_path = binary()
    with tempfile.TemporaryDirectory() as work:
        pki(work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLARS_CLOUD")}
        env.update({
            "POLARS_CLOUD_WEBHOOK_LISTEN": f"127.0.0.1:{PORT}",
            "POLARS_CLOUD_WEBHOOK_TLS_CERT": os.path.join(work, "tls.crt"),
            "POLARS_CLOUD_WEBHOOK_TLS_KEY": os.path.join(work, "tls.key"),
            "POLARS_CLOUD_WEBHOOK_SHUTDOWN_DELAY": "0s",
            "POLARS_CLOUD_LOG_FORMAT": "json",
            "POLARS_CLOUD_LOG": "warn",
        })
        log = open(os.path.join(work, "webhook.log"), "w")
        # The descriptor limit of the run.
        proc = subprocess.Popen(["prlimit", "--nofile=1024", bin_path, "webhook"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            client = Client(work)
            for _ in range(100):
                if client.healthz_ms() is not None:
                    break
                time.sleep(0.1)
            print(json.dumps({"binary": bin_path, "start": status(proc.pid)}), flush=True)
            which = sys.argv[1:] or ["stalled", "idle", "large"]
            for name in which:
                {"stalled": stalled_bodies, "idle": idle_connections, "large": large_reviews}[name](proc.pid, client)
                time.sleep(1)
            print(json.dumps({"end": status(proc.pid)}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
