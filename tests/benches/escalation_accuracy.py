#!/usr/bin/env python3
"""Accuracy against escalation rate on the 540 held-out digits (issue 15).

The edge model is a logistic regression (64 pixels / 16 -> 10 classes, softmax) trained on the
training split of scikit-learn's bundled digits, the same split as make_fixtures.py
(train_test_split(test_size=0.3, random_state=42, stratify=y)), and written as an ONNX graph
(MatMul + Add + Softmax, opset 17) with the onnx helper API:

    escalation_accuracy.py --export tests/fixtures/models/digits_edge_lr.onnx

An answer is escalated when the edge model's top softmax probability is below the threshold;
an escalated digit gets the center's answer, digits_cnn.onnx (its onnxruntime outputs,
tests/fixtures/digits/digits_cnn_ref_out.npy). The sweep (the default) is computed offline:
the edge model's probabilities by onnxruntime on the committed ONNX file, the center's by
the reference outputs; thresholds are chosen so that 0, 5, ..., 100 % of the digits escalate.

    escalation_accuracy.py [--edge FILE.onnx]

The real path agrees: tests/tests/it/escalation.rs sends the 540 digits through an edge
gateway (the `escalate` test plugin, the edge model on edgeplug's own backend) and a center
gateway (the `digits` plugin) at the 20 % row's threshold, and gets that row's figures.
"""

import argparse
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    raw = x.reshape(-1, 8, 8).astype(np.uint8)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.3, random_state=42, stratify=y)
    return raw[tr], y[tr].astype(np.int64), raw[te], y[te].astype(np.int64)


def export(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression

    raw_tr, y_tr, raw_te, y_te = split()
    # The split must be the fixtures' own: the test digits are the committed ones.
    assert np.array_equal(raw_te, np.load(FIXTURES / "digits" / "digits_test_raw.npy"))
    x_tr = raw_tr.reshape(len(raw_tr), 64).astype(np.float32) / 16
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x_tr, y_tr)
    w = model.coef_.T.astype(np.float32)  # [64, 10]
    b = model.intercept_.astype(np.float32)[None, :]  # [1, 10]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "digits_edge_lr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="escalation_accuracy.py"
    )
    onnx_model.ir_version = 8
    for key, value in {
        "description": "digits 0-9 edge model: logistic regression (scikit-learn, C=1) on the 8x8 "
        "pixels / 16, trained on make_fixtures.py's training split of the UCI digits",
        "preprocessing": "x = raw 8x8 pixels (0..16) / 16, row-major, float32 [1, 64]",
        "license": "trained for edgeplug on the UCI digits (CC BY 4.0)",
    }.items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, path)
    probs = edge_probabilities(path, raw_te)
    print(f"wrote {path}: test accuracy {np.mean(probs.argmax(1) == y_te):.4f} "
          f"(scikit-learn {model.score(raw_te.reshape(-1, 64) / 16, y_te):.4f})")


def edge_probabilities(path, raw):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = raw.reshape(len(raw), 1, 64).astype(np.float32) / 16
    return np.concatenate([session.run(None, {"x": row})[0] for row in x])


def sweep(edge_path):
    raw = np.load(FIXTURES / "digits" / "digits_test_raw.npy")
    labels = np.load(FIXTURES / "digits" / "digits_test_labels.npy")
    center = np.load(FIXTURES / "digits" / "digits_cnn_ref_out.npy").argmax(1)
    probs = edge_probabilities(edge_path, raw)
    edge = probs.argmax(1)
    confidence = probs.max(1)
    order = np.sort(confidence)
    n = len(labels)
    print(f"edge model alone: {np.sum(edge == labels)}/{n}; center alone: "
          f"{np.sum(center == labels)}/{n}")
    print()
    print("| escalated | threshold (top prob <) | accuracy | correct |")
    print("|---:|---:|---:|---:|")
    for percent in range(0, 101, 5):
        k = round(n * percent / 100)
        # The threshold that escalates exactly the k least confident digits (ties aside).
        if k == 0:
            threshold = 0.0
        elif k == n:
            threshold = 1.01
        else:
            threshold = float((order[k - 1] + order[k]) / 2)
        escalated = confidence < threshold
        answer = np.where(escalated, center, edge)
        correct = int(np.sum(answer == labels))
        print(f"| {100 * escalated.mean():.1f} % | {threshold:.4f} | "
              f"{100 * correct / n:.2f} % | {correct}/{n} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", metavar="FILE", help="train the edge model and write it")
    parser.add_argument("--edge", default=str(FIXTURES / "models" / "digits_edge_lr.onnx"))
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return
    sweep(args.edge)


if __name__ == "__main__":
    main()
