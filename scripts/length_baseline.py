#!/usr/bin/env python3
"""How far do block lengths alone go? A diagnostic for a prepared JPEG dataset.

Reads a prepared folder's manifest.csv (e.g. target/quickstart/data after a quickstart run),
lists every file's MCU bit lengths with the `blocks` example (`--json`), and trains a small
numpy MLP (one hidden layer of 128 ReLU units, plain SGD, 60 epochs, seed 0) on the lengths
alone: the model never sees a byte of content. Prints train and test accuracy. If TEMPEST
does no better than this, it has learnt the lengths and not the contents.

    cargo build --release --example blocks
    python3 scripts/length_baseline.py target/quickstart/data jpeg:75

Needs numpy. The variant is the manifest's `variant` column (`jpeg:75`, `jpeg:75x2`).
"""
import collections
import csv
import json
import os
import subprocess
import sys

import numpy as np


def lengths(folder, variant, blocks_bin):
    rows = [r for r in csv.DictReader(open(os.path.join(folder, "manifest.csv")))
            if r["variant"] == variant]
    if not rows:
        sys.exit(f"no rows of variant {variant!r} in {folder}/manifest.csv")
    paths = [os.path.join(folder, r["path"]) for r in rows]
    bits = collections.defaultdict(list)
    for start in range(0, len(paths), 2000):
        chunk = paths[start:start + 2000]
        out = subprocess.run([blocks_bin, "--json"] + chunk, capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            b = json.loads(line)
            if b["kind"] == "mcu":
                bits[b["file"]].append(b["bits"])
    width = max(len(v) for v in bits.values())
    x = np.zeros((len(paths), width), dtype=np.float32)
    for i, p in enumerate(paths):
        x[i, :len(bits[p])] = bits[p]
    y = np.array([int(r["label"]) for r in rows])
    split = np.array([r["split"] for r in rows])
    return x, y, split


def mlp(x, y, train, test, hidden=128, epochs=60, lr=0.05, batch=64, seed=0):
    rng = np.random.default_rng(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    classes = int(y.max()) + 1
    w1 = rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes))
    b2 = np.zeros(classes)
    xt, yt = x[train], y[train]
    for _ in range(epochs):
        order = rng.permutation(len(xt))
        for i in range(0, len(order), batch):
            b = order[i:i + batch]
            h = np.maximum(0, xt[b] @ w1 + b1)
            z = h @ w2 + b2
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(b)), yt[b]] -= 1
            p /= len(b)
            gh = p @ w2.T
            gh[h <= 0] = 0
            w2 -= lr * (h.T @ p)
            b2 -= lr * p.sum(0)
            w1 -= lr * (xt[b].T @ gh)
            b1 -= lr * gh.sum(0)

    def accuracy(m):
        h = np.maximum(0, x[m] @ w1 + b1)
        return float(((h @ w2 + b2).argmax(1) == y[m]).mean())

    return accuracy(train), accuracy(test)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    folder, variant = sys.argv[1], sys.argv[2]
    blocks_bin = os.environ.get("BLOCKS", os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "examples", "blocks"))
    x, y, split = lengths(folder, variant, blocks_bin)
    train, test = split == "train", split == "test"
    tr, te = mlp(x, y, train, test)
    print(f"{variant}: {x.shape[1]} MCUs per image, {int(train.sum())} train, "
          f"{int(test.sum())} test")
    print(f"MCU bit lengths alone, 128-unit MLP: train accuracy {tr:.4f}, "
          f"test accuracy {te:.4f}")


if __name__ == "__main__":
    main()
