"""What the soak scripts share: signed digits bundles of any version, plain HTTP requests, a
client posting in a loop and checking answers, a free port, timestamped log lines."""

import array
import http.client
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The digits version the repository ships (plugin.toml; the component's describe() says it too).
SHIPPED = re.search(
    r'^version = "(\d\.\d\.\d)"$', (REPO / "plugins/digits/plugin.toml").read_text(), re.M
).group(1)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- bundles ----


def patch_wasm(wasm: bytes, version: str) -> bytes:
    """The digits component with its describe() version (the crate's, SHIPPED) replaced by
    `version` (same length). Occurrences after '@', '-' or '/' (WIT package versions, paths in
    debug info) stay; the same rule as tests/src/gateway.rs."""
    assert len(version) == 5, "versions are a.b.c with single digits"
    out = bytearray(wasm)
    needle = SHIPPED.encode()
    patched = 0
    at = out.find(needle)
    while at != -1:
        before = out[at - 1] if at > 0 else None
        after = out[at + 5] if at + 5 < len(out) else None
        if before not in b"@-/" and not (
            after is not None and (chr(after).isdigit() or after == ord("."))
        ):
            out[at : at + 5] = version.encode()
            patched += 1
        at = out.find(needle, at + 5)
    if patched == 0:
        raise SystemExit("the digits component has no version string to rewrite")
    return bytes(out)


def version_of(n: int) -> str:
    """The n-th pushed version: 1.0.0, 1.0.1, ... 9.9.9 (single digits, growing)."""
    return f"{1 + n // 100}.{(n // 10) % 10}.{n % 10}"


def vkey(version: str):
    return tuple(int(p) for p in version.split("."))


class Bundles:
    """Signed digits bundles of any version, packed by `edgeplug pack`."""

    def __init__(self, edgeplug: Path, work: Path, wasm: Path):
        self.edgeplug = edgeplug
        self.dir = work / "bundles"
        self.src = work / "src"
        self.dir.mkdir()
        self.src.mkdir()
        self.key = work / "keys" / "soak.key"
        subprocess.run(
            [edgeplug, "keygen", "--out", work / "keys", "--name", "soak"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.trust = work / "trust"
        self.trust.mkdir()
        shutil.copy(work / "keys" / "soak.pub", self.trust / "soak.pub")
        self.wasm = wasm.read_bytes()
        self.manifest = (REPO / "plugins/digits/plugin.toml").read_text()

    def make(self, version: str) -> Path:
        out = self.dir / f"digits-{version}.epk"
        src = self.src / version
        src.mkdir()
        for folder in ["selftest", "learn"]:
            shutil.copytree(REPO / "plugins/digits" / folder, src / folder)
        shutil.copy(REPO / "plugins/digits/weights.safetensors", src)
        (src / "plugin.toml").write_text(
            self.manifest.replace(f'version = "{SHIPPED}"', f'version = "{version}"', 1)
        )
        (src / "plugin.wasm").write_bytes(
            self.wasm if version == SHIPPED else patch_wasm(self.wasm, version)
        )
        subprocess.run(
            [self.edgeplug, "pack", src, "--key", self.key, "--out", out],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(src)
        return out

    def verifies(self, path: Path) -> bool:
        done = subprocess.run(
            [self.edgeplug, "verify", "--trust", self.trust, path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return done.returncode == 0


# ---- HTTP ----


def request(port, method, path, body=None, headers=None, timeout=60.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client(threading.Thread):
    """Posts one plugin's input in a loop on a keep-alive connection, checking each answer."""

    def __init__(self, port, plugin, content_type, body, check, stop):
        super().__init__(daemon=True)
        self.port, self.plugin = port, plugin
        self.content_type, self.body, self.check = content_type, body, check
        self.stop = stop
        self.latencies = array.array("f")  # seconds, one per answered request
        self.statuses = {}
        self.right = 0
        self.wrong = []
        self.connection_errors = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                began = time.perf_counter()
                conn.request(
                    "POST",
                    f"/v1/plugins/{self.plugin}/infer",
                    body=self.body,
                    headers={"content-type": self.content_type},
                )
                response = conn.getresponse()
                data = response.read()
                self.latencies.append(time.perf_counter() - began)
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status == 200:
                    try:
                        right = self.check(json.loads(data))
                    except (ValueError, KeyError, IndexError, TypeError):
                        right = False
                    if right:
                        self.right += 1
                    else:
                        self.wrong.append(data[:200])
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.connection_errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()
