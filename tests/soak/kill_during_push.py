#!/usr/bin/env python3
"""SIGKILL `edgeplug serve` at random points of pushes and rollbacks under load, restart it with
the same command line each time, and check it comes back on a verified version.

    python3 tests/soak/kill_during_push.py [--kills 50] [--bin target/release/edgeplug] [--build]

Each round: `edgeplug serve --config C --install digits-SHIPPED.epk` (the version plugins/digits ships) starts (the same command line
every time); three clients post a digit to it in a loop; an admin client pushes newer digits
versions and rolls back, at random; after a random delay the gateway gets SIGKILL, wherever it
is. After each restart the script checks:

- it comes up (listens and answers `GET /v1/plugins`) with an active digits version;
- that version is the last one a push or rollback acknowledged, or the target of the one in
  flight at the kill (an acknowledged change is never lost, nothing else appears);
- the store's `active` file names it, its bundle's sha-256 is the one the gateway reports and
  `edgeplug verify` accepts the file against the trust store;
- it answers a digit correctly, from that version;
- no `.tmp-*` file is left in the state directory and the compile cache holds at most one entry
  per stored version.

Clients must never get a wrong answer; connection errors while the gateway is down are counted,
not failures. Exit status 0 when every round passed. This is a benchmark-style script, not part
of the test suite: it takes minutes.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from soaklib import REPO, SHIPPED, Bundles, Client, free_port, log, request, version_of, vkey

TOKEN = "soak-token"
KEEP_VERSIONS = 3
START_DEADLINE = 300.0  # seconds; only detects a hang


# ---- HTTP ----


def active_of(port):
    """(version, bundle sha-256) of the active digits version, from GET /v1/plugins."""
    status, _, body = request(port, "GET", "/v1/plugins", timeout=10)
    if status != 200:
        return None
    for plugin in json.loads(body)["plugins"]:
        if plugin["name"] == "digits" and plugin.get("active"):
            return plugin["active"]["version"], plugin["active"]["bundle_sha256"]
    return None


class Load:
    """Clients posting a seven in a loop, for the whole run, counting what they get."""

    def __init__(self, port, clients, body):
        self.stop = threading.Event()
        self.clients = [
            Client(port, "digits", "application/json", body, lambda a: a["label"] == 7, self.stop)
            for _ in range(clients)
        ]
        for c in self.clients:
            c.start()

    @property
    def ok(self):
        return sum(c.right for c in self.clients)

    @property
    def wrong(self):
        return [w for c in self.clients for w in c.wrong]

    @property
    def statuses(self):
        total = {}
        for c in self.clients:
            for s, n in c.statuses.items():
                total[s] = total.get(s, 0) + n
        return total

    @property
    def connection_errors(self):
        return sum(c.connection_errors for c in self.clients)

    def close(self):
        self.stop.set()
        for c in self.clients:
            c.join(timeout=60)


class Admin:
    """Pushes newer versions and rolls back, at random, until the gateway dies. Records what
    was acknowledged and what was in flight."""

    def __init__(self, port, bundles, next_index, acked):
        self.port = port
        self.bundles = bundles
        self.next_index = next_index
        self.acked = acked
        # (("push", version) or ("rollback", None), start time) while a request is out: one
        # attribute, so the main thread reads the operation and its start together.
        self.current = None
        self.ops = {"push": 0, "rollback": 0}
        self.durations = {"push": [], "rollback": []}
        self.refused = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            if random.random() < 0.7 and self.next_index < len(self.bundles):
                version, path = self.bundles[self.next_index]
                self.next_index += 1
                op, body = ("push", version), path.read_bytes()
                method, url = "PUT", "/v1/admin/plugins/digits"
            else:
                op, body = ("rollback", None), b""
                method, url = "POST", "/v1/admin/plugins/digits/rollback"
            began = time.monotonic()
            self.current = (op, began)
            try:
                status, _, data = request(
                    self.port,
                    method,
                    url,
                    body=body,
                    headers={"authorization": f"Bearer {TOKEN}"},
                    timeout=120,
                )
            except (OSError, http.client.HTTPException):
                return  # killed: `current` stays as it was
            if status == 200:
                self.acked = json.loads(data)["version"]
                self.ops[op[0]] += 1
                self.durations[op[0]].append(time.monotonic() - began)
            else:
                code = json.loads(data).get("error", {}).get("code", str(status))
                self.refused[code] = self.refused.get(code, 0) + 1
            self.current = None

    def join(self):
        self.thread.join(timeout=180)

    def wait_for(self, kind, timeout):
        """Until an operation of `kind` is in flight (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.current
            if current is not None and current[0][0] == kind:
                return
            time.sleep(0.0005)


# ---- the gateway ----


def start(command, log_path, port):
    """Starts serve; returns (process, seconds to ready) or raises with its log."""
    began = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"serve exited {proc.returncode} before listening:\n"
                + Path(log_path).read_text(errors="replace")[-3000:]
            )
        try:
            if active_of(port) is not None:
                return proc, time.monotonic() - began
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() - began > START_DEADLINE:
            proc.kill()
            raise RuntimeError(f"serve did not come up within {START_DEADLINE:.0f} s")
        time.sleep(0.05)


def check_restart(port, state, bundles, allowed, seven):
    """The checks after a restart; returns the active version and how many versions the store
    holds, or raises with what failed."""
    active = active_of(port)
    if active is None:
        raise AssertionError("no active digits version")
    version, sha = active
    if version not in allowed:
        raise AssertionError(f"active {version}, but only {sorted(allowed, key=vkey)} were possible")
    active_file = (state / "plugins/digits/active").read_text().strip()
    if active_file != version:
        raise AssertionError(f"the store's active file says {active_file}, the gateway {version}")
    stored = state / "plugins/digits" / f"{version}.epk"
    if hashlib.sha256(stored.read_bytes()).hexdigest() != sha:
        raise AssertionError(f"{stored} is not the bundle the gateway reports ({sha})")
    if not bundles.verifies(stored):
        raise AssertionError(f"edgeplug verify refuses {stored}")
    status, headers, body = request(
        port, "POST", "/v1/plugins/digits/infer", seven, {"content-type": "application/json"}
    )
    if status != 200 or json.loads(body)["label"] != 7:
        raise AssertionError(f"a seven got {status} {body[:200]!r}")
    if headers.get("x-edgeplug-version") != version:
        raise AssertionError(f"answered by {headers.get('x-edgeplug-version')}, active {version}")
    temps = [p for p in state.rglob(".tmp-*")]
    if temps:
        raise AssertionError(f"temp files left after the restart: {temps}")
    # One entry at most per stored version. There may be more than keep_versions of those: a
    # kill after a push wrote its bundle and before the store pruned (or switched `active`)
    # leaves one more, until the next install prunes.
    entries = list((state / "cache").glob("*.cwasm"))
    stored_versions = list((state / "plugins/digits").glob("*.epk"))
    if len(entries) > len(stored_versions):
        raise AssertionError(
            f"{len(entries)} compile cache entries for {len(stored_versions)} stored versions"
        )
    return version, len(stored_versions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--bin", type=Path, default=REPO / "target/release/edgeplug")
    parser.add_argument("--build", action="store_true", help="cargo build --release -p edgeplug first")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument(
        "--max-delay", type=float, default=4.0, help="longest time from ready to a timed SIGKILL, s"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)

    if args.build:
        subprocess.run(["cargo", "build", "--release", "-p", "edgeplug"], cwd=REPO, check=True)
    edgeplug = args.bin.resolve()
    if not edgeplug.exists():
        raise SystemExit(f"{edgeplug} is missing: cargo build --release -p edgeplug (or --build)")
    wasm = REPO / "target/wasm-plugins/wasm32-wasip2/plugin/edgeplug_plugin_digits.wasm"
    if not wasm.exists():
        wasm = REPO / "plugins/digits/plugin.wasm"
    if not wasm.exists() or not (REPO / "plugins/digits/weights.safetensors").exists():
        raise SystemExit("the digits plugin is not built: make plugins (and make run once for its weights)")

    work = Path(tempfile.mkdtemp(prefix="edgeplug-kill-"))
    log(f"work directory {work}, binary {edgeplug}, seed {seed}")
    bundles = Bundles(edgeplug, work, wasm)
    base = bundles.make(SHIPPED)
    count = args.kills * 6
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pushed = list(
            zip(
                [version_of(n) for n in range(count)],
                pool.map(bundles.make, [version_of(n) for n in range(count)]),
            )
        )
    log(f"{len(pushed) + 1} signed bundles packed")

    port = free_port()
    state = work / "state"
    config = work / "gateway.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nstate_dir = "state"\ntrust_dir = "trust"\n'
        f'admin_token = "{TOKEN}"\ndefault_plugin = "digits"\nkeep_versions = {KEEP_VERSIONS}\n'
    )
    command = [str(edgeplug), "serve", "--config", str(config), "--install", str(base)]
    log("command line: " + " ".join(command))
    seven = (REPO / "tests/fixtures/digits/seven.json").read_bytes()
    load = Load(port, args.clients, seven)

    failures = []
    acked = SHIPPED
    next_index = 0
    kill_points = {"push": 0, "rollback": 0, "between": 0}
    restart_times = []
    most_stored = 0
    # Durations of acknowledged operations so far, to aim kills inside them.
    durations = {"push": [], "rollback": []}
    versions_seen = set()
    proc = None
    try:
        proc, ready_in = start(command, work / "serve-0.log", port)
        check_restart(port, state, bundles, {acked}, seven)
        for round in range(1, args.kills + 1):
            admin = Admin(port, pushed, next_index, acked)
            # A third of the kills at a random time; the others at a random point inside a
            # push or a rollback (rollbacks of a loaded version take milliseconds, so a random
            # time alone would rarely land in one).
            aim = random.choice(["time", "push", "rollback"])
            if aim == "time":
                time.sleep(random.uniform(0.0, args.max_delay))
            else:
                admin.wait_for(aim, timeout=60)
                # Up to the median duration of this kind of operation so far (a guess until
                # one completed: pushes compile, rollbacks to a loaded version only swap).
                guess = args.max_delay if aim == "push" else 0.05
                typical = durations[aim][len(durations[aim]) // 2] if durations[aim] else guess
                time.sleep(random.uniform(0.0, typical))
            current = admin.current
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            admin.join()
            for kind in durations:
                durations[kind] = sorted(durations[kind] + admin.durations[kind])
            next_index = admin.next_index
            allowed = {admin.acked}
            if current is not None:
                in_flight, since = current
                kill_points[in_flight[0]] += 1
                what = f"{in_flight[0]} {in_flight[1] or ''} {1e3 * (time.monotonic() - since):.0f} ms in"
                if in_flight[0] == "push":
                    allowed.add(in_flight[1])
                else:
                    allowed |= {v for v, _ in pushed[:next_index]} | {SHIPPED}
                    allowed = {v for v in allowed if vkey(v) <= vkey(admin.acked)}
            else:
                kill_points["between"] += 1
                what = "between operations"
            try:
                proc, ready_in = start(command, work / f"serve-{round}.log", port)
                restart_times.append(ready_in)
                acked, stored = check_restart(port, state, bundles, allowed, seven)
                most_stored = max(most_stored, stored)
                versions_seen.add(acked)
                log(
                    f"kill {round}/{args.kills} ({what.strip()}; {admin.ops['push']} pushes, "
                    f"{admin.ops['rollback']} rollbacks acknowledged): back on {acked} in {ready_in:.2f} s"
                )
            except (AssertionError, RuntimeError) as e:
                failures.append(f"kill {round} ({what.strip()}): {e}")
                log(f"FAILED kill {round} ({what.strip()}): {e}")
                if proc.poll() is not None:
                    break
                acked = (active_of(port) or (acked,))[0]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=60) != 0:
                failures.append(f"SIGTERM: serve exited {proc.returncode}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        load.close()

    log(
        f"kills landed: {kill_points['push']} during a push, {kill_points['rollback']} during a "
        f"rollback, {kill_points['between']} between operations"
    )
    if restart_times:
        restart_times.sort()
        log(
            f"restart to ready: median {restart_times[len(restart_times) // 2]:.2f} s, "
            f"max {restart_times[-1]:.2f} s; versions active after restarts: {len(versions_seen)}; "
            f"most versions in the store after a restart: {most_stored} (keep_versions {KEEP_VERSIONS})"
        )
    log(
        f"clients: {load.ok} correct answers, {len(load.wrong)} wrong, statuses {load.statuses}, "
        f"{load.connection_errors} connection errors (while the gateway was down or dying)"
    )
    if load.wrong:
        failures.append(f"{len(load.wrong)} wrong answers, e.g. {load.wrong[0]!r}")
    if failures:
        log(f"FAILED ({len(failures)}), work directory kept: {work}")
        for f in failures:
            log("  " + f)
        return 1
    log(f"PASSED: {args.kills} SIGKILLs, every restart on a verified, acknowledged version")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"work directory kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
