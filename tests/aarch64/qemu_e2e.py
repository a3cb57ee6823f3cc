#!/usr/bin/env python3
"""The example plugins on an ARM64 edgeplug, run under qemu-aarch64 user-mode emulation.

    tests/aarch64/qemu_e2e.py target/aarch64-unknown-linux-gnu/debug/edgeplug

`make test-aarch64` cross-builds the binary and runs this. It checks what a Raspberry Pi owner
would get, on the NEON kernels (the log must say `isa=neon`):
  * the digits plugin on the 540 raw test arrays: 534/540 right, as on x86, and every
    probability within 1e-4 of onnxruntime's (tests/fixtures/digits/digits_cnn_ref_out.npy);
  * the image classifier (MobileNetV2) on the four photos: the reference top-1 classes
    (onnxruntime's, tests/tests/it/classifier.rs).
Emulation says nothing about speed; see README.md for the benchmark to run on a real board.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
QEMU = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]
PHOTOS = {"chelsea.png": 285, "coffee.png": 967, "rocket.jpg": 540, "astronaut.png": 450}


def run(edgeplug, plugin, files, cache):
    """`edgeplug run` under qemu; returns {file: result} and the log."""
    env = dict(os.environ, EDGEPLUG_LOG="info", NO_COLOR="1")
    done = subprocess.run(
        QEMU + [edgeplug, "run", str(plugin), "--cache-dir", cache] + [str(f) for f in files],
        capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"edgeplug run {plugin} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line["file"]: line["result"] for line in lines}, done.stderr


def check_neon(log, what):
    if "isa=neon" not in log and 'isa="neon"' not in log:
        sys.exit(f"{what}: the log does not say the models ran on NEON:\n{log[-2000:]}")


def digits(edgeplug, work, cache):
    raw = np.load(FIXTURES / "digits" / "digits_test_raw.npy")
    labels = np.load(FIXTURES / "digits" / "digits_test_labels.npy")
    reference = np.load(FIXTURES / "digits" / "digits_cnn_ref_out.npy")
    files = []
    for i, digit in enumerate(raw):
        path = work / f"digit{i:03}.json"
        path.write_text(json.dumps(digit.reshape(-1).tolist()))
        files.append(path)
    results, log = run(edgeplug, ROOT / "plugins" / "digits", files, cache)
    check_neon(log, "digits")
    correct, max_diff = 0, 0.0
    for i, path in enumerate(files):
        result = results[str(path)]
        correct += int(result["label"] == labels[i])
        max_diff = max(max_diff, float(np.abs(np.array(result["probabilities"]) - reference[i]).max()))
    print(f"digits under qemu-aarch64: {correct}/540 right, max |p - p_ref| = {max_diff:.2e}")
    if correct != 534 or max_diff > 1e-4:
        sys.exit("digits: expected 534/540 and probabilities within 1e-4 of the reference")


def photos(edgeplug, cache):
    files = [FIXTURES / "images" / name for name in PHOTOS]
    results, log = run(edgeplug, ROOT / "plugins" / "image-classifier", files, cache)
    check_neon(log, "image-classifier")
    for path in files:
        top1 = results[str(path)][0]["index"]
        print(f"image-classifier under qemu-aarch64: {path.name} -> {top1} (reference {PHOTOS[path.name]})")
        if top1 != PHOTOS[path.name]:
            sys.exit(f"{path.name}: top-1 {top1}, the reference is {PHOTOS[path.name]}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    edgeplug = str(pathlib.Path(sys.argv[1]).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = pathlib.Path(tmp), str(pathlib.Path(tmp) / "cache")
        digits(edgeplug, work, cache)
        photos(edgeplug, cache)


if __name__ == "__main__":
    main()
