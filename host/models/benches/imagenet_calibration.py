#!/usr/bin/env python3
"""Calibration inputs for `edgeplug quantize` on the image classifiers, and the check of what it
made: the photos bundled with scikit-image other than the four test photos (chelsea, coffee,
rocket, astronaut), each as a centre crop and four seeded random crops, preprocessed like the
plugin does for the model (short side 256, bilinear, crop 224, normalization, NCHW).

    target/ort-venv/bin/pip install scikit-image   # the photos (and Pillow)
    target/ort-venv/bin/python host/models/benches/imagenet_calibration.py [--model mobilenetv2]
    target/release/edgeplug quantize plugins/image-classifier/mobilenetv2.onnx \
        --calibration target/bench/mobilenetv2_calib.npy --held-out 0 \
        --out target/bench/mobilenetv2_int8_edgeplug.onnx
    target/ort-venv/bin/python host/models/benches/imagenet_calibration.py --check \
        target/bench/mobilenetv2_int8_edgeplug.onnx

`--check` runs the float model and the quantized one (onnxruntime, which also shows the QDQ
file is standard) on the four test photos and prints both top-1s and the file sizes.
"""
import argparse
import os
import pathlib

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[3]
TEST_PHOTOS = {"chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def normalize(model, crop):
    x = crop.astype(np.float32)
    if model == "mobilenetv2":
        x = (x / 255.0 - MEAN) / STD
    else:  # efficientnet_lite0
        x = (x - 127.0) / 128.0
    return x.transpose(2, 0, 1).astype(np.float32)


def crops(image, rng, extra):
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    a = np.asarray(image.convert("RGB"))
    H, W = a.shape[:2]
    out = [a[(H - 224) // 2:(H - 224) // 2 + 224, (W - 224) // 2:(W - 224) // 2 + 224]]
    for _ in range(extra):
        y, x = rng.integers(0, H - 223), rng.integers(0, W - 223)
        out.append(a[y:y + 224, x:x + 224])
    return out


def make(model):
    import skimage.data
    folder = pathlib.Path(os.path.dirname(skimage.data.__file__))
    photos = sorted(p for p in folder.iterdir()
                    if p.suffix in (".png", ".jpg") and p.name not in TEST_PHOTOS)
    rng = np.random.default_rng(0)
    xs = [normalize(model, c) for p in photos for c in crops(Image.open(p), rng, 4)]
    out = ROOT / "target/bench" / f"{model}_calib.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.stack(xs))
    print(f"{out}: {len(xs)} inputs from {len(photos)} photos")


def check(model, quantized):
    import onnxruntime as ort
    float_file = ROOT / "plugins/image-classifier" / f"{model}.onnx"
    xs = np.load(ROOT / f"tests/fixtures/imagenet/{model}_input.npy")
    top1 = {}
    for name, f in [("float", float_file), ("int8", pathlib.Path(quantized))]:
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        top1[name] = [int(s.run(None, {s.get_inputs()[0].name: xs[i:i + 1]})[0].argmax()) for i in range(4)]
        print(f"{name:5} {f.name}: {f.stat().st_size / 1e6:.2f} MB, top-1 on chelsea/coffee/rocket/astronaut "
              f"{top1[name]}")
    same = sum(a == b for a, b in zip(top1["float"], top1["int8"]))
    print(f"same top-1 as the float model on {same}/4 photos")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenetv2", choices=["mobilenetv2", "efficientnet_lite0"])
    ap.add_argument("--check", metavar="QUANTIZED_ONNX")
    args = ap.parse_args()
    if args.check:
        check(args.model, args.check)
    else:
        make(args.model)


if __name__ == "__main__":
    main()
