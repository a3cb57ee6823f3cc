#!/usr/bin/env python3
"""Run `edgeplug serve` with the three example plugins for a long time under load, pushes,
rollbacks and bad input, and check it neither grows nor fails.

    python3 tests/soak/soak.py [--minutes 30] [--warmup 5] [--bin target/release/edgeplug]

The gateway serves digits, image-classifier and forecaster (packed and signed with a throwaway
key). For the whole run:

- clients post each plugin's self-test input in a loop on keep-alive connections and check
  every answer (digits: label 7; image-classifier: top-1 ImageNet class 285; forecaster: the
  2008 forecast within the self-test's 1e-3), recording each request's latency;
- an admin client pushes a newer digits version every `--push-every` seconds, rolls back every
  third time, and pushes a tampered bundle every fourth time (which must be refused);
- a bad-input client sends, every second, one of: a truncated PNG, a body over the plugin's
  limit, a malformed JSON tensor, an unknown plugin; each must get its 4xx;
- slow clients: one trickles a digits request's body in small pieces over a few seconds (it must
  get its right answer), one sends headers and a tenth of the body and then stalls (the gateway
  must answer 408 and close within the body deadline), and one reads a photo's answer a few
  bytes at a time;
- RSS and open file descriptors of the gateway are sampled every 5 s.

It passes when: RSS in the last minute is within `--rss-growth` (5 %) of RSS in the minute after
warm-up (medians of the samples), the most fds open in the last minute exceed the most in that
minute by at most `--fd-growth` (2), no answer is wrong, no answer is a 5xx, every bad input got
a 4xx, every tampered push was refused, every good push and rollback acknowledged, and SIGTERM
stops the gateway with status 0. It prints RSS and fds per minute and p50/p99/max latency per
plugin. A benchmark-style script, not part of the test suite.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from soaklib import REPO, SHIPPED, Bundles, Client, free_port, log, request, version_of

TOKEN = "soak-token"
SAMPLE_EVERY = 5.0  # seconds
START_DEADLINE = 300.0  # seconds; only detects a hang
BODY_TIMEOUT_MS = 5000  # shorter than the default 30 s so the stalled client comes back often


def checks():
    """Per plugin: (content type, body, a check of the answer's JSON)."""
    seven = (REPO / "tests/fixtures/digits/seven.json").read_bytes()
    chelsea = (REPO / "plugins/image-classifier/selftest/chelsea.png").read_bytes()
    window = (REPO / "plugins/forecaster/selftest/window-1984-2007.json").read_bytes()
    forecast = json.loads((REPO / "plugins/forecaster/selftest/forecast-2008.json").read_text())
    top1 = json.loads((REPO / "plugins/image-classifier/selftest/chelsea.mobilenetv2.json").read_text())[0]

    def image_top1(answer):
        first = answer[0] if isinstance(answer, list) else answer["top5"][0]
        return first["index"] == top1["index"]

    return {
        "digits": ("application/json", seven, lambda a: a["label"] == 7),
        "image-classifier": ("image/png", chelsea, image_top1),
        "forecaster": (
            "application/json",
            window,
            lambda a: abs(a["forecast"] - forecast["forecast"]) <= 1e-3,
        ),
    }


class BadInput(threading.Thread):
    """One bad request a second, each of which must be answered with a 4xx."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        chelsea = (REPO / "plugins/image-classifier/selftest/chelsea.png").read_bytes()
        self.cases = [
            ("truncated PNG", "image-classifier", "image/png", chelsea[: len(chelsea) // 3]),
            ("over the limit", "digits", "application/json", b"[" + b"1," * (9 << 20) + b"1]"),
            ("malformed JSON", "forecaster", "application/json", b'{"window": [1, 2,'),
            ("unknown plugin", "no-such-plugin", "application/json", b"[]"),
        ]
        self.sent = {name: 0 for name, *_ in self.cases}
        self.not_4xx = []

    def run(self):
        i = 0
        while not self.stop.wait(1.0):
            name, plugin, content_type, body = self.cases[i % len(self.cases)]
            i += 1
            try:
                status, _, data = request(
                    self.port, "POST", f"/v1/plugins/{plugin}/infer", body,
                    {"content-type": content_type}, timeout=60,
                )
            except (OSError, http.client.HTTPException) as e:
                # A refused oversized body may be cut off while it is still being sent; what
                # matters is that the gateway answered or closed, and stays up (the clients see).
                if name != "over the limit":
                    self.not_4xx.append(f"{name}: {e}")
                self.sent[name] += 1
                continue
            self.sent[name] += 1
            if not 400 <= status < 500:
                self.not_4xx.append(f"{name}: {status} {data[:200]!r}")


class SlowClients(threading.Thread):
    """A trickling body, a stalled body and a slow reader, in turn, one at a time."""

    def __init__(self, port, stop, body_timeout_s):
        super().__init__(daemon=True)
        self.port, self.stop, self.body_timeout_s = port, stop, body_timeout_s
        self.seven = (REPO / "tests/fixtures/digits/seven.json").read_bytes()
        self.chelsea = (REPO / "plugins/image-classifier/selftest/chelsea.png").read_bytes()
        self.done = {"trickled": 0, "stalled 408": 0, "slow read": 0}
        self.failures = []

    def head(self, plugin, content_type, length):
        return (
            f"POST /v1/plugins/{plugin}/infer HTTP/1.1\r\nHost: soak\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    def answer(self, sock):
        """Status and body of one HTTP/1.1 answer read to the end (the request said close)."""
        data = b""
        while chunk := sock.recv(64):
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
        return status, data.partition(b"\r\n\r\n")[2]

    def trickle(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(self.head("digits", "application/json", len(self.seven)).replace(
                b"Host: soak", b"Host: soak\r\nConnection: close"))
            pieces = [self.seven[i : i + 256] for i in range(0, len(self.seven), 256)]
            for piece in pieces:
                s.sendall(piece)
                time.sleep(3.0 / len(pieces))
            status, body = self.answer(s)
        if status == 200 and json.loads(body)["label"] == 7:
            self.done["trickled"] += 1
        else:
            self.failures.append(f"trickled body answered {status} {body[:200]!r}")

    def stall(self):
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.body_timeout_s + 30) as s:
            s.sendall(self.head("digits", "application/json", len(self.seven)))
            s.sendall(self.seven[: len(self.seven) // 10])
            status, body = self.answer(s)
        took = time.monotonic() - began
        # The deadline grows by a second per body_min_rate_kib KiB received: a tenth of the
        # digits body is far under one KiB, so the deadline is the timeout plus at most 1 s.
        if status == 408 and took <= self.body_timeout_s + 5:
            self.done["stalled 408"] += 1
        else:
            self.failures.append(f"stalled body answered {status} after {took:.1f} s {body[:200]!r}")

    def slow_read(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(self.head("image-classifier", "image/png", len(self.chelsea)).replace(
                b"Host: soak", b"Host: soak\r\nConnection: close") + self.chelsea)
            data = b""
            while chunk := s.recv(16):
                data += chunk
                time.sleep(0.01)
        if data.startswith(b"HTTP/1.1 200 "):
            self.done["slow read"] += 1
        else:
            self.failures.append(f"slow reader got {data[:200]!r}")

    def run(self):
        i = 0
        while not self.stop.wait(2.0):
            kind = [self.trickle, self.stall, self.slow_read][i % 3]
            i += 1
            try:
                kind()
            except (OSError, ValueError, KeyError) as e:
                self.failures.append(f"{kind.__name__}: {e}")


class Admin(threading.Thread):
    """Pushes, rolls back and pushes tampered bundles on a schedule."""

    def __init__(self, port, bundles, every, stop):
        super().__init__(daemon=True)
        self.port, self.bundles, self.every, self.stop = port, bundles, every, stop
        self.done = {"push": 0, "rollback": 0, "tampered refused": 0}
        self.failures = []

    def admin(self, method, path, body=b""):
        return request(
            self.port, method, path, body, {"authorization": f"Bearer {TOKEN}"}, timeout=300
        )

    def run(self):
        n = 0
        while not self.stop.wait(self.every):
            n += 1
            try:
                if n % 4 == 0:
                    bundle = bytearray(self.bundles.make(version_of(500 + n)).read_bytes())
                    bundle[len(bundle) // 2] ^= 0x01
                    status, _, data = self.admin("PUT", "/v1/admin/plugins/digits", bytes(bundle))
                    if 400 <= status < 500:
                        self.done["tampered refused"] += 1
                    else:
                        self.failures.append(f"tampered push answered {status} {data[:200]!r}")
                elif n % 3 == 0:
                    status, _, data = self.admin("POST", "/v1/admin/plugins/digits/rollback")
                    if status == 200:
                        self.done["rollback"] += 1
                    else:
                        self.failures.append(f"rollback answered {status} {data[:200]!r}")
                else:
                    body = self.bundles.make(version_of(n)).read_bytes()
                    status, _, data = self.admin("PUT", "/v1/admin/plugins/digits", body)
                    if status == 200:
                        self.done["push"] += 1
                    else:
                        self.failures.append(f"push answered {status} {data[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"admin request failed: {e}")


def sample(pid):
    """(RSS in MiB, open fds) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5, help="minutes before growth counts")
    parser.add_argument("--bin", type=Path, default=REPO / "target/release/edgeplug")
    parser.add_argument("--push-every", type=float, default=30, help="seconds between admin operations")
    parser.add_argument("--digits-clients", type=int, default=2)
    parser.add_argument("--rss-growth", type=float, default=0.05)
    parser.add_argument("--fd-growth", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.minutes < args.warmup + 2:
        raise SystemExit("--minutes must leave at least 2 minutes after --warmup")

    edgeplug = args.bin.resolve()
    if not edgeplug.exists():
        raise SystemExit(f"{edgeplug} is missing: cargo build --release -p edgeplug")
    for plugin in ["digits", "image-classifier", "forecaster"]:
        if not (REPO / "plugins" / plugin / "plugin.wasm").exists():
            raise SystemExit(f"plugins/{plugin}/plugin.wasm is missing: make plugins")
    if not (REPO / "plugins/digits/weights.safetensors").exists():
        raise SystemExit("plugins/digits/weights.safetensors is missing: make run once")

    work = Path(tempfile.mkdtemp(prefix="edgeplug-soak-"))
    log(f"work directory {work}, binary {edgeplug}")
    bundles = Bundles(edgeplug, work, REPO / "plugins/digits/plugin.wasm")
    installs = [bundles.make(SHIPPED)]
    for plugin in ["image-classifier", "forecaster"]:
        out = work / f"{plugin}.epk"
        subprocess.run(
            [edgeplug, "pack", REPO / "plugins" / plugin, "--key", bundles.key, "--out", out],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        installs.append(out)

    port = free_port()
    (work / "gateway.toml").write_text(
        f'listen = "127.0.0.1:{port}"\nstate_dir = "state"\ntrust_dir = "trust"\n'
        f'admin_token = "{TOKEN}"\ndefault_plugin = "digits"\nkeep_versions = 3\n'
        f"[limits]\nbody_timeout_ms = {BODY_TIMEOUT_MS}\n"
    )
    command = [str(edgeplug), "serve", "--config", str(work / "gateway.toml")]
    for path in installs:
        command += ["--install", str(path)]
    serve_log = open(work / "serve.log", "wb")
    proc = subprocess.Popen(command, stdout=serve_log, stderr=subprocess.STDOUT)
    began = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}: see {work / 'serve.log'}")
        try:
            status, _, body = request(port, "GET", "/v1/plugins", timeout=5)
            if status == 200 and len(json.loads(body)["plugins"]) == 3:
                break
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() - began > START_DEADLINE:
            proc.kill()
            raise SystemExit("serve did not come up")
        time.sleep(0.1)
    log(f"gateway up in {time.monotonic() - began:.1f} s with 3 plugins; soaking {args.minutes:g} min")

    stop = threading.Event()
    clients = []
    for plugin, (content_type, body, check) in checks().items():
        for _ in range(args.digits_clients if plugin == "digits" else 1):
            clients.append(Client(port, plugin, content_type, body, check, stop))
    bad = BadInput(port, stop)
    admin = Admin(port, bundles, args.push_every, stop)
    slow = SlowClients(port, stop, BODY_TIMEOUT_MS / 1000)
    for t in clients + [bad, admin, slow]:
        t.start()

    samples = []  # (seconds since start, RSS MiB, fds)
    start = time.monotonic()
    end = start + args.minutes * 60
    failures = []
    try:
        while time.monotonic() < end:
            if proc.poll() is not None:
                failures.append(f"the gateway exited {proc.returncode} during the soak")
                break
            rss, fds = sample(proc.pid)
            now = time.monotonic() - start
            samples.append((now, rss, fds))
            if len(samples) % 12 == 0:
                answered = sum(len(c.latencies) for c in clients)
                log(f"minute {now / 60:.0f}: RSS {rss:.1f} MiB, {fds} fds, {answered} answers so far")
            time.sleep(SAMPLE_EVERY)
    finally:
        stop.set()
        for t in clients + [bad, admin, slow]:
            t.join(timeout=300)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "a hang (killed)"
            if code != 0:
                failures.append(f"SIGTERM: serve exited with {code}")
        serve_log.close()

    # ---- report ----
    print("\nminute  RSS MiB (median)  fds (max)")
    by_minute = {}
    for t, rss, fds in samples:
        by_minute.setdefault(int(t // 60), []).append((rss, fds))
    for minute, rows in sorted(by_minute.items()):
        print(f"{minute:6d}  {median([r for r, _ in rows]):16.1f}  {max(f for _, f in rows):9d}")
    warm = int(args.warmup)
    last = max(by_minute) if by_minute else 0
    if warm in by_minute and last > warm:
        rss_warm = median([r for r, _ in by_minute[warm]])
        rss_last = median([r for r, _ in by_minute[last]])
        fds_warm = max(f for _, f in by_minute[warm])
        fds_last = max(f for _, f in by_minute[last])
        growth = rss_last / rss_warm - 1
        print(
            f"\nRSS minute {warm} -> {last}: {rss_warm:.1f} -> {rss_last:.1f} MiB ({100 * growth:+.1f} %, "
            f"bound {100 * args.rss_growth:.0f} %); fds {fds_warm} -> {fds_last} (bound +{args.fd_growth})"
        )
        if growth > args.rss_growth:
            failures.append(f"RSS grew {100 * growth:.1f} % after warm-up")
        if fds_last > fds_warm + args.fd_growth:
            failures.append(f"open fds grew from {fds_warm} to {fds_last} after warm-up")
    else:
        failures.append("too few samples to compare warm-up and the last minute")

    print("\nplugin             answers     p50 ms    p99 ms    max ms  statuses")
    for plugin in checks():
        mine = [c for c in clients if c.plugin == plugin]
        latencies = [x for c in mine for x in c.latencies]
        statuses = {}
        for c in mine:
            for s, n in c.statuses.items():
                statuses[s] = statuses.get(s, 0) + n
            if c.wrong:
                failures.append(f"{plugin}: {len(c.wrong)} wrong answers, e.g. {c.wrong[0]!r}")
            if c.connection_errors:
                failures.append(f"{plugin}: {c.connection_errors} connection errors")
        if not latencies:
            failures.append(f"{plugin}: no answers")
            continue
        print(
            f"{plugin:18s} {len(latencies):8d} {1e3 * percentile(latencies, 0.5):9.2f} "
            f"{1e3 * percentile(latencies, 0.99):9.2f} {1e3 * max(latencies):9.2f}  {statuses}"
        )
        errors = {s: n for s, n in statuses.items() if s != 200}
        if errors:
            failures.append(f"{plugin}: non-200 answers {errors}")
    print(f"\nbad input sent: {bad.sent}; admin: {admin.done}; slow clients: {slow.done}")
    failures += [f"bad input: {f}" for f in bad.not_4xx]
    failures += [f"admin: {f}" for f in admin.failures]
    failures += [f"slow client: {f}" for f in slow.failures]
    failures += [f"slow clients: no {k}" for k, n in slow.done.items() if n == 0]

    if failures:
        log(f"FAILED ({len(failures)}), work directory kept: {work}")
        for f in failures:
            log("  " + f)
        return 1
    log(f"PASSED: {args.minutes:g} minutes, flat after warm-up, every answer right, no 5xx")
    if args.keep:
        log(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
