#!/usr/bin/python3
"""Plans and cuts the second-SoundFont validation split for scripts/devsets/instruments-val2.sh.

    gm_second.py plan WORK_DIR
    gm_second.py cut WORK_DIR OUT_DIR

`plan` writes one Standard MIDI File per General MIDI program that is not a test program of
gm_plan.py (train and validation programs: 99 of 128) to WORK_DIR/midi/pNNN.mid: program
change, then the program's notes one after another, each held 2.0 s, an All Sound Off
(controller 120) at 2.5 s and the next note at 3.0 s, so that one fluidsynth call renders a
whole program (a SoundFont in SF3 form takes seconds to load). The notes are three of
gm_plan.py's twelve per program (the 3rd, 7th and 11th: low, middle, high) at its two
velocities. `cut` reads WORK_DIR/wav/pNNN.wav (16 kHz mono 16-bit, rendered from those files),
cuts each note's 2.5 s into OUT_DIR/val/<family>/pNNN_<name>_n<note>_v<velocity>.wav, drops
near-silent clips (maximum amplitude < 0.01, as instruments.sh does) and prints one line per
clip: keep|drop,<path>,<family>,<program>,<max>. Only the Python standard library.
"""
import array
import os
import struct
import sys
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gm_plan  # noqa: E402
from gm_plan import vlq  # noqa: E402

RATE = 16000
SPACING_S, CLIP_S, HELD_S = 3.0, 2.5, 2.0
NOTE_INDICES = (2, 6, 10)


def programs():
    test = set(gm_plan.TEST)
    return [p for p in range(128) if p not in test]


def notes(p):
    low = gm_plan.PROGRAM_LOW.get(p, gm_plan.FAMILY_LOW[p // 8])
    return [(low + i * gm_plan.NOTE_STEP, v) for i in NOTE_INDICES for v in gm_plan.VELOCITIES]


def smf(p, path):
    # 480 ticks per quarter note at 500000 us per quarter: 960 ticks per second.
    tps = 960
    ev = vlq(0) + b"\xff\x51\x03" + (500000).to_bytes(3, "big") + vlq(0) + bytes([0xC0, p])
    t = 0  # ticks of the last event written
    for k, (n, v) in enumerate(notes(p)):
        at = round(k * SPACING_S * tps)
        for when, msg in ((at, bytes([0x90, n, v])),
                          (at + round(HELD_S * tps), bytes([0x80, n, 0])),
                          (at + round(CLIP_S * tps), bytes([0xB0, 120, 0]))):
            ev += vlq(when - t) + msg
            t = when
    end = round(len(notes(p)) * SPACING_S * tps)
    ev += vlq(end - t) + b"\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480))
        f.write(b"MTrk" + struct.pack(">I", len(ev)) + ev)


def plan(work):
    os.makedirs(os.path.join(work, "midi"), exist_ok=True)
    for p in programs():
        smf(p, os.path.join(work, "midi", f"p{p:03d}.mid"))


def cut(work, out):
    for p in programs():
        fam = gm_plan.FAMILIES[p // 8]
        with wave.open(os.path.join(work, "wav", f"p{p:03d}.wav"), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE), p
            pcm = array.array("h", w.readframes(w.getnframes()))
        if sys.byteorder == "big":
            pcm.byteswap()
        os.makedirs(os.path.join(out, "val", fam), exist_ok=True)
        for k, (n, v) in enumerate(notes(p)):
            start, length = round(k * SPACING_S * RATE), round(CLIP_S * RATE)
            clip = pcm[start:start + length]
            clip.extend([0] * (length - len(clip)))
            mx = max(abs(x) for x in clip) / 32768
            rel = f"val/{fam}/p{p:03d}_{gm_plan.GM_NAMES[p]}_n{n}_v{v}.wav"
            if mx < 0.01:
                print(f"drop,{rel},{fam},p{p:03d},{mx:.6f}")
                continue
            if sys.byteorder == "big":
                clip.byteswap()
            with wave.open(os.path.join(out, rel), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(clip.tobytes())
            print(f"keep,{rel},{fam},p{p:03d},{mx:.6f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "plan":
        plan(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "cut":
        cut(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
