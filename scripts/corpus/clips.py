#!/usr/bin/env python3
"""Cuts the audio files of one unpacked Debian package into short WAV clips (for
scripts/corpus/audio.sh): every file ffprobe reads as audio is decoded by ffmpeg to 16 kHz
mono 16-bit samples, cut into pieces of --clip-seconds; pieces shorter than --min-seconds and
near-silent ones (peak below 0.01 of full scale) are dropped; at most --package-minutes are
kept. Appends one row per clip to --corpus (package,licence,source,clip,seconds) and one per
file or piece left out to --skipped (package,file,reason)."""

import argparse
import array
import csv
import os
import subprocess
import sys
import wave

RATE = 16000
# File names that may hold sound (asked of ffprobe); others are listed as skipped unread.
AUDIO = (".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3", ".spx", ".au", ".aif", ".aiff",
         ".mod", ".xm", ".it", ".s3m")


def probe(path):
    """(codec, seconds) of the file's first audio stream, or None."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=codec_name:format=duration", "-of", "default=nw=1:nk=1", path],
        capture_output=True, text=True, check=False)
    fields = r.stdout.split()
    if r.returncode != 0 or not fields:
        return None
    try:
        seconds = float(fields[1]) if len(fields) > 1 else 0.0
    except ValueError:
        seconds = 0.0
    return fields[0], seconds


def decode(path):
    """The file's samples as 16 kHz mono int16, or an error message."""
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(RATE),
         "-f", "s16le", "-c:a", "pcm_s16le", "-"],
        capture_output=True, check=False)
    if r.returncode != 0:
        return None, r.stderr.decode("utf-8", "replace").strip().replace("\n", " ")[:120]
    samples = array.array("h")
    samples.frombytes(r.stdout[: len(r.stdout) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples, None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("package", "licence", "root", "clips", "corpus", "skipped"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--clip-seconds", type=float, default=3.0)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--package-minutes", type=float, default=30.0)
    a = ap.parse_args()
    clip, least = int(a.clip_seconds * RATE), int(a.min_seconds * RATE)
    budget = a.package_minutes * 60.0
    kept = 0.0
    files = []
    for top, dirs, names in os.walk(a.root):
        dirs.sort()
        for n in sorted(names):
            files.append(os.path.join(top, n))
    with open(a.corpus, "a", newline="") as cf, open(a.skipped, "a", newline="") as sf:
        corpus, skipped = csv.writer(cf), csv.writer(sf)

        def skip(rel, why):
            skipped.writerow([a.package, rel, why])

        for path in files:
            rel = os.path.relpath(path, a.root)
            if rel.startswith("usr/share/doc/"):
                continue
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            if not rel.lower().endswith(AUDIO):
                skip(rel, "not a sound file name (" + "/".join(e[1:] for e in AUDIO) + ")")
                continue
            if kept >= budget:
                skip(rel, f"the package's {a.package_minutes:g} minutes are full")
                continue
            p = probe(path)
            if p is None:
                skip(rel, "not audio (ffprobe finds no audio stream)")
                continue
            codec, seconds = p
            if 0 < seconds < a.min_seconds:
                skip(rel, f"shorter than {a.min_seconds:g} s ({codec}, {seconds:.2f} s)")
                continue
            samples, err = decode(path)
            if samples is None:
                skip(rel, f"ffmpeg cannot decode it ({codec}): {err}")
                continue
            if len(samples) < least:
                skip(rel, f"shorter than {a.min_seconds:g} s ({codec}, {len(samples) / RATE:.2f} s)")
                continue
            base = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.splitext(rel)[0])
            for k, at in enumerate(range(0, len(samples), clip)):
                piece = samples[at: at + clip]
                where = f"{rel}#{k:04d}"
                if len(piece) < least:
                    skip(where, f"a last piece shorter than {a.min_seconds:g} s")
                    continue
                peak = max(abs(min(piece)), abs(max(piece))) / 32768.0
                if peak < 0.01:
                    skip(where, f"near-silent (peak {peak:.4f})")
                    continue
                if kept >= budget:
                    skip(where, f"the package's {a.package_minutes:g} minutes are full")
                    continue
                name = f"{base}_{k:04d}.wav"
                with wave.open(os.path.join(a.clips, name), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(RATE)
                    out = array.array("h", piece)
                    if sys.byteorder == "big":
                        out.byteswap()
                    w.writeframes(out.tobytes())
                secs = len(piece) / RATE
                kept += secs
                corpus.writerow([a.package, a.licence, rel,
                                 f"clips/{a.package}/{name}", f"{secs:.3f}"])
    print(f"   kept {kept / 60:.1f} minutes")


if __name__ == "__main__":
    main()
