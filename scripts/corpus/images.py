#!/usr/bin/env python3
"""Turns the raster images of one unpacked Debian package into small grayscale PNGs (for
scripts/corpus/images.sh): per image name (an icon theme ships one icon at several sizes) the
largest file is kept; ffmpeg scales it to fit --size × --size (aspect kept), lays it on black
(transparent parts become black, as MNIST's background is), converts it to 8-bit gray; images
with almost no contrast (max − min below 16 of 255) and exact duplicates are dropped. Appends
one row per image to --corpus (package,licence,source,image,width,height) and one per file
left out to --skipped (package,file,reason)."""

import argparse
import csv
import hashlib
import os
import struct
import subprocess
import zlib

RASTER = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".xpm", ".tga", ".webp")


def png_gray(path, pixels, size):
    """Writes `pixels` (size × size bytes) as an 8-bit grayscale PNG."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    rows = b"".join(b"\x00" + pixels[r * size:(r + 1) * size] for r in range(size))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(rows, 9)))
        f.write(chunk(b"IEND", b""))


def area(path):
    """Width × height from a PNG's header, else the file's size in bytes: which of an image's
    copies is the largest."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return w * h
    return os.path.getsize(path)


def probe(path):
    """(width, height) of the file's first video stream (an image), or None."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=False)
    try:
        w, h = (int(x) for x in r.stdout.strip().split(",")[:2])
    except ValueError:
        return None
    return (w, h) if r.returncode == 0 and w > 0 and h > 0 else None


def gray(path, size):
    """The image fitted into size × size on black, as size² gray bytes, or an error."""
    graph = (f"color=black:s={size}x{size},format=rgba[bg];"
             f"[0:v]scale={size}:{size}:force_original_aspect_ratio=decrease,format=rgba[fg];"
             "[bg][fg]overlay=(W-w)/2:(H-h)/2:shortest=1,format=gray")
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-filter_complex", graph,
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=False)
    if r.returncode != 0 or len(r.stdout) != size * size:
        return None, r.stderr.decode("utf-8", "replace").strip().replace("\n", " ")[:120]
    return r.stdout, None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("package", "licence", "root", "images", "corpus", "skipped"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--min-side", type=int, default=16)
    ap.add_argument("--max-images", type=int, default=2000)
    a = ap.parse_args()
    # Per image name, its files (an icon theme's sizes of one icon), largest first (PNGs by
    # their pixels, other files by their bytes).
    by_name = {}
    with open(a.skipped, "a", newline="") as sf:
        skipped = csv.writer(sf)
        for top, dirs, names in os.walk(a.root):
            dirs.sort()
            for n in sorted(names):
                path = os.path.join(top, n)
                rel = os.path.relpath(path, a.root)
                if rel.startswith("usr/share/doc/") or os.path.islink(path):
                    continue
                if not n.lower().endswith(RASTER):
                    skipped.writerow([a.package, rel, "not a raster image file name"])
                    continue
                stem = os.path.splitext(n)[0]
                by_name.setdefault(stem, []).append((area(path), rel))
    seen = set()
    kept = 0
    with open(a.corpus, "a", newline="") as cf, open(a.skipped, "a", newline="") as sf:
        corpus, skipped = csv.writer(cf), csv.writer(sf)
        for stem in sorted(by_name):
            files = sorted(by_name[stem], key=lambda x: (-x[0], x[1]))
            for _, rel in files[1:]:
                skipped.writerow([a.package, rel, "a smaller copy of an image kept (same name)"])
            rel = files[0][1]
            if kept >= a.max_images:
                skipped.writerow([a.package, rel, f"the package's {a.max_images} images are full"])
                continue
            path = os.path.join(a.root, rel)
            dims = probe(path)
            if dims is None:
                skipped.writerow([a.package, rel, "not an image ffprobe reads"])
                continue
            if min(dims) < a.min_side:
                skipped.writerow([a.package, rel, f"smaller than {a.min_side} px ({dims[0]}x{dims[1]})"])
                continue
            pixels, err = gray(path, a.size)
            if pixels is None:
                skipped.writerow([a.package, rel, f"ffmpeg cannot convert it: {err}"])
                continue
            if max(pixels) - min(pixels) < 16:
                skipped.writerow([a.package, rel, "almost no contrast at this size"])
                continue
            digest = hashlib.sha1(pixels).hexdigest()
            if digest in seen:
                skipped.writerow([a.package, rel, "the same pixels as an image kept"])
                continue
            seen.add(digest)
            base = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.splitext(rel)[0])
            name = f"{base}.png"
            png_gray(os.path.join(a.images, name), pixels, a.size)
            kept += 1
            corpus.writerow([a.package, a.licence, rel, f"images/{a.package}/{name}", dims[0], dims[1]])
    print(f"   kept {kept} images")


if __name__ == "__main__":
    main()
