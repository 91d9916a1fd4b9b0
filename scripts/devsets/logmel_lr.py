#!/usr/bin/python3
"""Log-mel logistic-regression reference for a development set in the `folder` layout.

    /usr/bin/python3 scripts/devsets/logmel_lr.py DIR

DIR holds manifest.csv (path,label,split,source) and the 16 kHz mono 16-bit WAV files, as
scripts/devsets/spoken-words.sh and instruments.sh write them (without a manifest, the files
DIR/{train,val,test}/<label>/*.wav are used).

Features per clip: 64 log-mel bands (25 ms Hann window, 10 ms hop, 512-point FFT, HTK mel scale
0-8000 Hz, log of the power + 1e-6); the mean and standard deviation of each band over the whole
clip and the band means in 4 equal time slices: 384 numbers. Standardised on train. Multinomial
logistic regression (scikit-learn, lbfgs): C chosen from {0.01, 0.1, 1, 10} by val accuracy
(trained on train), then trained on train with that C and evaluated on test once.
Debian's python3-numpy and python3-sklearn; one thread.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import csv  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SR, WIN, HOP, NFFT, NMELS, SLICES = 16000, 400, 160, 512, 64, 4
CS = (0.01, 0.1, 1.0, 10.0)


def mel_filterbank():
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel2hz(np.linspace(hz2mel(0.0), hz2mel(SR / 2), NMELS + 2))
    bins = np.fft.rfftfreq(NFFT, 1.0 / SR)
    fb = np.zeros((NMELS, len(bins)))
    for m in range(NMELS):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0.0, None)
    return fb


FB = mel_filterbank()
WINDOW = np.hanning(WIN + 1)[:-1]


def read_wav(path):
    with wave.open(path) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SR, 1, 2):
            sys.exit(f"{path}: not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768


def features(x):
    if len(x) < WIN:
        x = np.pad(x, (0, WIN - len(x)))
    n = 1 + (len(x) - WIN) // HOP
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * WINDOW, NFFT)) ** 2
    logmel = np.log(spec @ FB.T + 1e-6)  # frames × 64
    parts = [logmel.mean(0), logmel.std(0)]
    parts += [s.mean(0) for s in np.array_split(logmel, SLICES, axis=0)]
    return np.concatenate(parts)


def load(root):
    man = os.path.join(root, "manifest.csv")
    rows = []
    if os.path.exists(man):
        for r in csv.DictReader(open(man)):
            rows.append((r["path"], r["label"], r["split"]))
    else:
        for split in ("train", "val", "test"):
            for label in sorted(os.listdir(os.path.join(root, split))):
                for f in sorted(os.listdir(os.path.join(root, split, label))):
                    if f.endswith(".wav"):
                        rows.append((os.path.join(split, label, f), label, split))
    data = {}
    for split in ("train", "val", "test"):
        sel = [r for r in rows if r[2] == split]
        X = np.stack([features(read_wav(os.path.join(root, p))) for p, _, _ in sel])
        y = np.array([lab for _, lab, _ in sel])
        data[split] = (X, y)
    return data


def fit(X, y, c):
    # lbfgs with more than two classes: multinomial (the 'auto' choice of scikit-learn).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        m = LogisticRegression(C=c, max_iter=5000, random_state=0).fit(X, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return m, converged


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    t0 = time.time()
    np.random.seed(0)
    data = load(root)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data["train"], data["val"], data["test"]
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xva, Xte = scaler.transform(Xtr), scaler.transform(Xva), scaler.transform(Xte)
    classes = sorted(set(ytr))
    print(f"{root}: {Xtr.shape[1]} features; train {len(ytr)}, val {len(yva)}, test {len(yte)} "
          f"clips; {len(classes)} classes in train, {len(set(yva))} in val, {len(set(yte))} in "
          f"test (numpy {np.__version__}, scikit-learn {sklearn.__version__})")
    print()
    print("| C | train acc | val acc | converged |")
    print("|---:|---:|---:|---|")
    best = None
    for c in CS:
        m, ok = fit(Xtr, ytr, c)
        tr = (m.predict(Xtr) == ytr).mean()
        va = (m.predict(Xva) == yva).mean()
        print(f"| {c:g} | {100 * tr:.2f} % | {100 * va:.2f} % | {'yes' if ok else 'no'} |")
        if best is None or va > best[1]:  # ties: the smaller C
            best = (c, va)
    c = best[0]
    m, _ = fit(Xtr, ytr, c)
    pred = m.predict(Xte)
    acc = (pred == yte).mean()
    print()
    major = max(classes, key=lambda k: ((ytr == k).sum(), k))
    print(f"chosen C = {c:g} (val {100 * best[1]:.2f} %); test accuracy {100 * acc:.2f} % "
          f"({int((pred == yte).sum())}/{len(yte)})")
    print(f"baselines on test: always the most frequent train class ({major}) "
          f"{100 * (yte == major).mean():.2f} %; the most frequent test class "
          f"{100 * max((yte == k).mean() for k in set(yte)):.2f} %")
    print()
    print("| class | test clips | test acc |")
    print("|---|---:|---:|")
    for k in sorted(set(yte)):
        sel = yte == k
        print(f"| {k} | {int(sel.sum())} | {100 * (pred[sel] == k).mean():.1f} % |")
    print()
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
