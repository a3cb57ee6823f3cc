"""Writes reference.jsonl: the gateway's "original classes" check for the digits plugin.

Ten digits of each class, the first of each in the order of the held-out test split
(tests/fixtures/digits/digits_test_raw.npy and digits_test_labels.npy, the 540 digits of
scikit-learn's digits data set that digits_cnn.onnx was not trained on), one JSON object per
line in the shape of the gateway's feedback body: the label, and the request body the plugin
takes (the 8x8 array of 0..16 values as JSON, like selftest/seven.json) in base64.

Run from the repository's root: python3 plugins/digits/learn/make_reference.py
(needs numpy). It prints how many of them the shipped network gets right, from onnxruntime's
outputs in tests/fixtures/digits/digits_cnn_ref_out.npy.
"""

import base64
import json

import numpy as np

PER_CLASS = 10
FIXTURES = "tests/fixtures/digits/"

raw = np.load(FIXTURES + "digits_test_raw.npy")
labels = np.load(FIXTURES + "digits_test_labels.npy")
reference = np.load(FIXTURES + "digits_cnn_ref_out.npy")

chosen = sorted(i for c in range(10) for i in np.flatnonzero(labels == c)[:PER_CLASS])
with open("plugins/digits/learn/reference.jsonl", "w") as out:
    for i in chosen:
        body = json.dumps(raw[i].astype(int).tolist()).encode()
        line = {
            "label": int(labels[i]),
            "content_type": "application/json",
            "input": base64.b64encode(body).decode(),
        }
        out.write(json.dumps(line) + "\n")
right = sum(int(reference[i].argmax() == labels[i]) for i in chosen)
print(f"{len(chosen)} digits (test split rows {chosen[0]}..{chosen[-1]}); "
      f"the shipped network gets {right} right")
