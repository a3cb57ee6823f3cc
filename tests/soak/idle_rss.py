#!/usr/bin/env python3
"""Idle resident memory of `edgeplug serve`: with no plugin, and with the three examples.

    python3 tests/soak/idle_rss.py [target/dist/edgeplug]

Builds nothing: run `make plugins host` (or `make dist`) first. Each gateway gets a fresh state
directory, serves until /v2/health/ready answers, idles two seconds, and its VmRSS is read from
/proc; the examples are packed with a throwaway key the gateway trusts.
"""

import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ["digits", "image-classifier", "forecaster"]


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_rss(edgeplug, bundles, work, port):
    config = work / f"gateway-{port}.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "state-{port}"\ntrust_dir = "trust"\n')
    cmd = [edgeplug, "serve", "--config", str(config)]
    for b in bundles:
        cmd += ["--install", str(b)]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                sys.exit(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("serve never became ready")
            time.sleep(0.2)
        time.sleep(2)
        return rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def main():
    edgeplug = str(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target/release/edgeplug").resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        (work / "trust").mkdir()
        subprocess.run([edgeplug, "keygen", "--out", str(work), "--name", "rss"], check=True,
                       stdout=subprocess.DEVNULL)
        (work / "trust" / "rss.pub").write_bytes((work / "rss.pub").read_bytes())
        bundles = []
        for name in EXAMPLES:
            out = work / f"{name}.epk"
            subprocess.run([edgeplug, "pack", str(ROOT / "plugins" / name), "--key", str(work / "rss.key"),
                            "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
            bundles.append(out)
        empty = idle_rss(edgeplug, [], work, 18431)
        full = idle_rss(edgeplug, bundles, work, 18432)
    print(f"idle RSS of edgeplug serve ({edgeplug}):")
    print(f"  no plugin:            {empty / 1024:6.1f} MiB")
    print(f"  {', '.join(EXAMPLES)}: {full / 1024:6.1f} MiB")


if __name__ == "__main__":
    main()
