#!/usr/bin/env python3
"""Deterministic generators for the bench inputs (Python standard library only).

Called by make.sh; see README.md for what each output is.

    gen.py music OUT.wav            60 s of a music-like stereo signal, 44.1 kHz, 16-bit
    gen.py image OUT.ppm            a 1920x1080 photo-like colour image (seeded)
    gen.py mnist DIGITS_DIR OUT_DIR 1,000 real MNIST digits as 28x28 PGM files
    gen.py pack OUT FILE...         concatenate files as [u32 LE length][bytes] records

Every random choice comes from random.Random with a fixed seed; Python guarantees the
sequence of Random.random() for a given seed across versions.
"""

import json
import math
import os
import random
import struct
import sys
import wave

RATE = 44100
SECONDS = 60


def music(out):
    """A chord progression with a plucked melody, a bass line and a noise hi-hat.

    Not music anyone would choose to hear, but it has what matters to an encoder: tonal
    partials that change every beat, transients, stereo panning and a noise floor.
    """
    rng = random.Random(20251)
    n = RATE * SECONDS
    left = [0.0] * n
    right = [0.0] * n
    beat = 0.25  # seconds: eighth notes at 120 bpm
    # Chords as MIDI note numbers (I-vi-IV-V in C, then ii-V-I-I), two bars each.
    chords = [
        (60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62),
        (50, 53, 57), (55, 59, 62), (60, 64, 67), (60, 64, 67),
    ]
    scale = [0, 2, 4, 5, 7, 9, 11]

    def freq(m):
        return 440.0 * 2.0 ** ((m - 69) / 12.0)

    def add(start, dur, f, amp, pan, decay, partials):
        s0 = int(start * RATE)
        s1 = min(n, s0 + int(dur * RATE))
        gl = amp * math.cos(pan * math.pi / 2)
        gr = amp * math.sin(pan * math.pi / 2)
        w = [2 * math.pi * f * k / RATE for k, _ in partials]
        a = [g for _, g in partials]
        for i in range(s0, s1):
            t = i - s0
            env = math.exp(-decay * t / RATE) * min(1.0, t / 200.0)
            v = 0.0
            for wk, ak in zip(w, a):
                v += ak * math.sin(wk * t)
            v *= env
            left[i] += gl * v
            right[i] += gr * v

    bar = 8 * beat
    t = 0.0
    c = 0
    while t < SECONDS:
        chord = chords[c % len(chords)]
        # Pad: the chord held for two bars, panned across the field.
        for j, m in enumerate(chord):
            add(t, 2 * bar, freq(m), 0.05, 0.2 + 0.3 * j, 0.6, [(1, 1.0), (2, 0.3), (3, 0.1)])
        # Bass: root on every beat of four.
        for b in range(0, 16, 2):
            add(t + b * beat, 2 * beat, freq(chord[0] - 24), 0.12, 0.5, 4.0,
                [(1, 1.0), (2, 0.5), (3, 0.25)])
        # Melody: a random walk on the scale, plucked.
        deg = 7
        for b in range(16):
            if rng.random() < 0.2:
                continue
            deg = max(0, min(13, deg + rng.choice((-2, -1, -1, 1, 1, 2))))
            m = 72 + 12 * (deg // 7) + scale[deg % 7] - 12
            add(t + b * beat, beat * 1.5, freq(m), 0.09, 0.35 + 0.3 * rng.random(), 7.0,
                [(1, 1.0), (2, 0.6), (3, 0.3), (4, 0.15), (5, 0.08)])
        # Hi-hat: short noise bursts on every eighth.
        for b in range(16):
            s0 = int((t + b * beat) * RATE)
            for k in range(min(2000, n - s0)):
                v = (rng.random() * 2 - 1) * 0.04 * math.exp(-k / 300.0)
                left[s0 + k] += v * 0.6
                right[s0 + k] += v
        t += 2 * bar
        c += 1

    peak = max(max(abs(x) for x in left), max(abs(x) for x in right))
    g = 0.9 / peak
    frames = bytearray()
    for lv, rv in zip(left, right):
        frames += struct.pack("<hh", int(lv * g * 32767), int(rv * g * 32767))
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(frames))


def value_noise(rng, w, h, cell):
    """Smooth noise: random values on a grid of `cell`-pixel cells, interpolated."""
    gw = w // cell + 2
    gh = h // cell + 2
    grid = [[rng.random() for _ in range(gw)] for _ in range(gh)]
    # Per-column and per-row interpolation weights, computed once.
    cols = []
    for x in range(w):
        fx = x / cell
        ix = int(fx)
        u = fx - ix
        cols.append((ix, u * u * (3 - 2 * u)))
    out = []
    for y in range(h):
        fy = y / cell
        iy = int(fy)
        v = fy - iy
        v = v * v * (3 - 2 * v)
        r0 = grid[iy]
        r1 = grid[iy + 1]
        row = []
        for ix, u in cols:
            a = r0[ix] + (r0[ix + 1] - r0[ix]) * u
            b = r1[ix] + (r1[ix + 1] - r1[ix]) * u
            row.append(a + (b - a) * v)
        out.append(row)
    return out


def image(out):
    """A landscape: sky with clouds and a sun, mountains, a textured field, a house, trees."""
    w, h = 1920, 1080
    rng = random.Random(1080)
    clouds = value_noise(rng, w, h, 160)
    detail = value_noise(rng, w, h, 24)
    fine = value_noise(rng, w, h, 6)
    # Mountain ridge and the field's horizon, per column.
    ridge = []
    phase = [rng.random() * 6.3 for _ in range(4)]
    for x in range(w):
        y = 430
        y += 90 * math.sin(x / 310 + phase[0]) + 45 * math.sin(x / 97 + phase[1])
        y += 18 * math.sin(x / 31 + phase[2]) + 7 * math.sin(x / 9 + phase[3])
        ridge.append(y)
    horizon = [620 + 25 * math.sin(x / 400 + 1.0) for x in range(w)]
    sun = (1450, 230, 70)
    trees = [(rng.randrange(0, w), rng.randrange(700, 1000), rng.randrange(30, 70)) for _ in range(14)]
    trees.sort(key=lambda t: t[1])
    house = (520, 640, 820, 820)  # x0, y0, x1, y1 of the walls

    pix = bytearray(w * h * 3)
    for y in range(h):
        cr = clouds[y]
        dr = detail[y]
        fr = fine[y]
        for x in range(w):
            d = dr[x]
            f = fr[x]
            if y < ridge[x]:
                # Sky: blue overhead to pale at the horizon, soft clouds, the sun's glow.
                s = y / 500.0
                r = 70 + 120 * s
                g = 120 + 100 * s
                b = 210 + 35 * s
                c = max(0.0, cr[x] * 1.6 - 0.75) * (0.6 + 0.4 * d)
                r += (250 - r) * c
                g += (250 - g) * c
                b += (252 - b) * c
                dx = x - sun[0]
                dy = y - sun[1]
                dist = math.sqrt(dx * dx + dy * dy)
                if dist < sun[2]:
                    r, g, b = 255, 246, 215
                else:
                    glow = 60 * math.exp(-(dist - sun[2]) / 90)
                    r += glow
                    g += glow * 0.9
                    b += glow * 0.5
            elif y < horizon[x]:
                # Mountains: bluish rock, darker with depth, streaked by detail noise.
                k = (y - ridge[x]) / 300.0
                r = 95 - 30 * k + 40 * (d - 0.5) + 20 * (f - 0.5)
                g = 105 - 25 * k + 40 * (d - 0.5) + 20 * (f - 0.5)
                b = 130 - 20 * k + 35 * (d - 0.5) + 20 * (f - 0.5)
                if y - ridge[x] < 25 and d > 0.45:
                    r, g, b = 235, 238, 245  # snow on the ridge
            else:
                # Field: green, brighter towards the viewer, with grass texture.
                k = (y - horizon[x]) / 460.0
                r = 60 + 40 * k + 50 * (d - 0.5) + 45 * (f - 0.5)
                g = 110 + 50 * k + 50 * (d - 0.5) + 45 * (f - 0.5)
                b = 40 + 10 * k + 20 * (d - 0.5) + 20 * (f - 0.5)
            pix[(y * w + x) * 3:(y * w + x) * 3 + 3] = bytes(
                (int(max(0, min(255, r))), int(max(0, min(255, g))), int(max(0, min(255, b))))
            )

    def put(x, y, r, g, b):
        if 0 <= x < w and 0 <= y < h:
            i = (y * w + x) * 3
            pix[i:i + 3] = bytes((max(0, min(255, int(r))), max(0, min(255, int(g))), max(0, min(255, int(b)))))

    # House: lit wall, shaded roof, windows.
    x0, y0, x1, y1 = house
    for y in range(y0, y1):
        for x in range(x0, x1):
            shade = 200 - 40 * (x - x0) / (x1 - x0) + 20 * (fine[y][x] - 0.5)
            put(x, y, shade, shade * 0.85, shade * 0.7)
    for y in range(y0 - 120, y0):
        half = (x1 - x0) / 2 + 30
        span = half * (y - (y0 - 120)) / 120
        cx = (x0 + x1) / 2
        for x in range(int(cx - span), int(cx + span)):
            t = 140 + 30 * (detail[y][x % w] - 0.5) - 40 * (x > cx)
            put(x, y, t, t * 0.45, t * 0.35)
    for wx in (x0 + 40, x0 + 200):
        for y in range(y0 + 40, y0 + 110):
            for x in range(wx, wx + 70):
                put(x, y, 60 + (y - y0), 80 + (y - y0), 110 + (y - y0))
    for y in range(y0 + 70, y1):
        for x in range(x0 + 120, x0 + 180):
            put(x, y, 90, 60, 40)
    # Trees: a trunk and a round crown, lit from the sun's side.
    for tx, ty, tr in trees:
        for y in range(ty, ty + tr):
            for x in range(tx - tr // 8, tx + tr // 8):
                put(x, y, 80, 55, 35)
        for y in range(ty - 2 * tr, ty + tr // 3):
            for x in range(tx - tr, tx + tr):
                dx = x - tx
                dy = y - (ty - tr)
                if dx * dx + dy * dy < tr * tr:
                    lit = 0.6 + 0.4 * (dx / tr) - 0.2 * (dy / tr)
                    n = fine[y % h][x % w] - 0.5
                    put(x, y, (30 + 40 * n) * lit + 10, (90 + 60 * n) * lit + 20, (30 + 20 * n) * lit)

    # Sensor grain.
    for i in range(len(pix)):
        v = pix[i] + int(rng.random() * 13) - 6
        pix[i] = 0 if v < 0 else 255 if v > 255 else v

    with open(out, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(pix)


def mnist(digits_dir, out_dir):
    """The first 100 digits of each class, interleaved 0, 1, ..., 9, 0, 1, ... as PGM."""
    per_class = []
    for d in range(10):
        with open(os.path.join(digits_dir, f"{d}.json")) as f:
            data = json.load(f)["data"]
        per_class.append(data)
    os.makedirs(out_dir, exist_ok=True)
    k = 0
    for i in range(100):
        for d in range(10):
            vals = per_class[d][i * 784:(i + 1) * 784]
            assert len(vals) == 784
            px = bytes(max(0, min(255, round(v * 255))) for v in vals)
            with open(os.path.join(out_dir, f"{k:04d}.pgm"), "wb") as f:
                f.write(b"P5\n28 28\n255\n")
                f.write(px)
            k += 1


def pack(out, files):
    with open(out, "wb") as f:
        for name in files:
            with open(name, "rb") as g:
                data = g.read()
            f.write(struct.pack("<I", len(data)))
            f.write(data)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "music":
        music(*args)
    elif cmd == "image":
        image(*args)
    elif cmd == "mnist":
        mnist(*args)
    elif cmd == "pack":
        pack(args[0], args[1:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
