#!/usr/bin/env python3
"""Skiff's footprint: time to ready, idle RSS, and RSS per idle connection.

Starts the echo app and two skiffd sidecars with mTLS (the embedded CA under
a fresh SKIFF_HOME) and the bench's real-path settings (metrics on), then:

- ready: milliseconds from exec to the first 204 from /v1.0/healthz, polled
  every millisecond. The callee starts first and creates the CA; the caller's
  figure is a start against an existing local CA: a fresh key pair, a
  certificate signed for it, listeners bound. Repeated ROUNDS times.
- idle RSS: each sidecar's VmRSS after a few calls, then a settle.
- per idle connection: N HTTP/1.1 connections that each made one keep-alive
  request, then N HTTP/2 connections that sent the preface and SETTINGS and
  read the server's, all left open; (RSS after - RSS before) / N.

Usage: perf/scripts/footprint.py [--conns 10000] [--rounds 5]
(build first: cargo build --release -p skiff-dataplane -p skiff-perf)
Everything runs on 127.0.0.1 and is killed at the end.
"""

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.environ.get("SKIFF_BIN_DIR") or os.path.join(ROOT, "target", "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def status(port, path):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        line = s.recv(64).split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else None
    except OSError:
        return None
    finally:
        s.close()


def start_sidecar(procs, home, app_id, app_port):
    http, grpc = free_port(), free_port()
    cmd = [os.path.join(BIN, "skiffd"), "--app-id", app_id, "--dapr-http-port", str(http),
           "--dapr-grpc-port", str(grpc), "--metrics-port", "0", "--log-level", "warn",
           "--enable-mtls"]
    if app_port:
        cmd += ["--app-port", str(app_port)]
    env = dict(os.environ, SKIFF_HOME=home)
    env.pop("DAPR_API_TOKEN", None)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    deadline = t0 + 10
    while time.perf_counter() < deadline:
        if status(http, "/v1.0/healthz") == 204:
            return p, http, (time.perf_counter() - t0) * 1000
        if p.poll() is not None:
            sys.exit(f"skiffd {app_id} exited with {p.returncode}")
        time.sleep(0.001)
    sys.exit(f"skiffd {app_id} not ready in 10 s")


def call(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()


def h1_conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("HTTP/1.1 connection closed")
        got += chunk
    return s


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def h2_conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(H2_PREFACE)
    # The server's SETTINGS frame (9-byte header + payload).
    hdr = s.recv(9)
    if len(hdr) < 9 or hdr[3] != 4:
        raise RuntimeError("no SETTINGS from the HTTP/2 listener")
    return s


def per_conn(pid, port, n, open_one):
    time.sleep(0.3)
    before = rss_kib(pid)
    socks = [open_one(port) for _ in range(n)]
    time.sleep(1.0)
    after = rss_kib(pid)
    alive = sum(1 for _ in socks)
    for s in socks:
        s.close()
    return (after - before) * 1024 / alive, before, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.conns + 100:
        sys.exit(f"open-file limit {hard} is below --conns {a.conns}")
    procs, work = [], tempfile.mkdtemp(prefix="skiff-footprint-")
    try:
        eh, eg = free_port(), free_port()
        procs.append(subprocess.Popen([os.path.join(BIN, "skiff-echo"), "--http-port", str(eh),
                                       "--grpc-port", str(eg)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        home = os.path.join(work, "home")
        callee, _, first = start_sidecar(procs, home, "web", eh)
        ready = []
        for _ in range(a.rounds):
            p, _, ms = start_sidecar(procs, home, "caller", None)
            ready.append(ms)
            p.kill()
            p.wait()
            procs.remove(p)
        caller, ch, ms = start_sidecar(procs, home, "caller", None)
        ready.append(ms)
        for _ in range(50):
            call(ch, "/v1.0/invoke/web/method/mirror")
        time.sleep(1.0)
        idle = (rss_kib(caller.pid), rss_kib(callee.pid))
        h1, b1, a1 = per_conn(caller.pid, ch, a.conns, h1_conn)
        # A fresh sidecar for HTTP/2, so it cannot reuse what HTTP/1.1 freed.
        caller.kill()
        caller.wait()
        caller, ch, _ = start_sidecar(procs, home, "caller", None)
        call(ch, "/v1.0/invoke/web/method/mirror")
        h2, b2, a2 = per_conn(caller.pid, ch, a.conns, h2_conn)
        print(f"| ready after exec (mTLS cert from the local CA), median of {len(ready)} | "
              f"{statistics.median(ready):.0f} ms (min {min(ready):.0f}, max {max(ready):.0f}; "
              f"first start creating the CA: {first:.0f} ms) |")
        print(f"| idle RSS after 50 calls, caller / callee | {idle[0] / 1024:.1f} / "
              f"{idle[1] / 1024:.1f} MiB |")
        print(f"| per idle HTTP/1.1 connection ({a.conns}) | {h1 / 1024:.1f} KiB "
              f"({b1 / 1024:.1f} → {a1 / 1024:.1f} MiB) |")
        print(f"| per idle HTTP/2 connection ({a.conns}) | {h2 / 1024:.1f} KiB "
              f"({b2 / 1024:.1f} → {a2 / 1024:.1f} MiB) |")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
