#!/usr/bin/python3
"""Plans the instrument-family set for scripts/devsets/instruments.sh.

    gm_plan.py SF2 WORK_DIR

Reads the SoundFont's preset -> instrument -> sample mapping, decides the notes of each General
MIDI program (bank 0, programs 0-127), writes one Standard MIDI File per clip and
WORK_DIR/plan.csv (split,family,program,name,note,velocity,midi,wav), groups the programs that
play the same samples, checks that no group straddles two splits (exits 1 if one does) and
writes the groups to WORK_DIR/groups.txt. Only the Python standard library.
"""
import collections
import csv
import os
import struct
import sys

FAMILIES = ["piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble",
            "brass", "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic",
            "percussive", "sound_effects"]

GM_NAMES = [
    "acoustic_grand_piano", "bright_acoustic_piano", "electric_grand_piano", "honky_tonk_piano",
    "electric_piano_1", "electric_piano_2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music_box", "vibraphone", "marimba", "xylophone",
    "tubular_bells", "dulcimer",
    "drawbar_organ", "percussive_organ", "rock_organ", "church_organ", "reed_organ",
    "accordion", "harmonica", "tango_accordion",
    "acoustic_guitar_nylon", "acoustic_guitar_steel", "electric_guitar_jazz",
    "electric_guitar_clean", "electric_guitar_muted", "overdriven_guitar", "distortion_guitar",
    "guitar_harmonics",
    "acoustic_bass", "electric_bass_finger", "electric_bass_pick", "fretless_bass",
    "slap_bass_1", "slap_bass_2", "synth_bass_1", "synth_bass_2",
    "violin", "viola", "cello", "contrabass", "tremolo_strings", "pizzicato_strings",
    "orchestral_harp", "timpani",
    "string_ensemble_1", "string_ensemble_2", "synth_strings_1", "synth_strings_2",
    "choir_aahs", "voice_oohs", "synth_voice", "orchestra_hit",
    "trumpet", "trombone", "tuba", "muted_trumpet", "french_horn", "brass_section",
    "synth_brass_1", "synth_brass_2",
    "soprano_sax", "alto_sax", "tenor_sax", "baritone_sax", "oboe", "english_horn", "bassoon",
    "clarinet",
    "piccolo", "flute", "recorder", "pan_flute", "blown_bottle", "shakuhachi", "whistle",
    "ocarina",
    "lead_1_square", "lead_2_sawtooth", "lead_3_calliope", "lead_4_chiff", "lead_5_charang",
    "lead_6_voice", "lead_7_fifths", "lead_8_bass_lead",
    "pad_1_new_age", "pad_2_warm", "pad_3_polysynth", "pad_4_choir", "pad_5_bowed",
    "pad_6_metallic", "pad_7_halo", "pad_8_sweep",
    "fx_1_rain", "fx_2_soundtrack", "fx_3_crystal", "fx_4_atmosphere", "fx_5_brightness",
    "fx_6_goblins", "fx_7_echoes", "fx_8_sci_fi",
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    "tinkle_bell", "agogo", "steel_drums", "woodblock", "taiko_drum", "melodic_tom",
    "synth_drum", "reverse_cymbal",
    "guitar_fret_noise", "breath_noise", "seashore", "bird_tweet", "telephone_ring",
    "helicopter", "applause", "gunshot",
]
assert len(GM_NAMES) == 128

# Lowest note of each family (MIDI note number); 12 notes in steps of 4 semitones from there.
FAMILY_LOW = [36, 48, 36, 40, 28, 40, 40, 40, 44, 56, 40, 40, 40, 40, 40, 40]
PROGRAM_LOW = {40: 52, 41: 48, 42: 36, 43: 28, 47: 36, 58: 28, 67: 32, 70: 34, 72: 64,
               108: 48, 110: 52}
NOTES_PER_PROGRAM, NOTE_STEP = 12, 4
VELOCITIES = (64, 110)

# The split, by program (fixed). Programs that play the same samples (see groups()) are on one
# side; in TimGM6mb the synth pads and most synth effects play the same "SynthStrings",
# "Spectrum" and "Syn Vox" samples as programs of other families, so that group (34 programs)
# trains, and synth_pad has no held-out program.
TEST = [5, 7, 9, 12, 17, 18, 26, 30, 34, 36, 42, 45, 50, 52, 57, 60, 65, 69, 73, 77, 80, 84,
        96, 105, 107, 113, 117, 123, 125]
VAL = [6, 14, 19, 28, 38, 46, 55, 59, 71, 79, 87, 109, 115, 126]

# Two programs share samples when a sample they both play sounds on at least this share of the
# rendered notes of one of them (a sample confined to a top or bottom key range does not count).
SHARE = 0.5


def read_sf2(path):
    data = open(path, "rb").read()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        sys.exit(f"{path}: not a SoundFont 2 file")

    def chunks(off, end):
        while off < end:
            cid = data[off:off + 4]
            size = struct.unpack("<I", data[off + 4:off + 8])[0]
            yield cid, off + 8, size
            off += 8 + size + (size & 1)

    pdta = {}
    for cid, off, size in chunks(12, len(data)):
        if cid == b"LIST" and data[off:off + 4] == b"pdta":
            for c2, o2, s2 in chunks(off + 4, off + size):
                pdta[c2.decode()] = data[o2:o2 + s2]

    def recs(name, fmt):
        n = struct.calcsize(fmt)
        b = pdta[name]
        return [struct.unpack(fmt, b[i:i + n]) for i in range(0, len(b), n)]

    return {
        "phdr": recs("phdr", "<20sHHHIII"), "pbag": recs("pbag", "<HH"),
        "pgen": recs("pgen", "<HH"), "inst": recs("inst", "<20sH"),
        "ibag": recs("ibag", "<HH"), "igen": recs("igen", "<HH"),
        "shdr": recs("shdr", "<20sIIIIIbbHH"),
    }


def zones(bags, gens, start, end, terminal):
    """(global zone generators, [zone generators]) of one preset or instrument."""
    out, glob = [], {}
    for zi, b in enumerate(range(start, end)):
        g = {gens[k][0]: gens[k][1] for k in range(bags[b][0], bags[b + 1][0])}
        if terminal not in g:
            if zi == 0:
                glob = g
            continue
        out.append(g)
    return glob, out


def in_range(g, glob, op, x):
    v = g.get(op, glob.get(op, 0x7F00))  # keyRange (43) / velRange (44): lo | hi << 8
    return (v & 0xFF) <= x <= (v >> 8)


def samples_played(sf, program, note, vel):
    """Sample ids that sound for (note, vel) on bank 0 `program`."""
    phdr = sf["phdr"]
    ks = [k for k in range(len(phdr) - 1) if phdr[k][1] == program and phdr[k][2] == 0]
    if not ks:
        return set()
    k = ks[0]
    pglob, pz = zones(sf["pbag"], sf["pgen"], phdr[k][3], phdr[k + 1][3], 41)
    out = set()
    for z in pz:
        if not (in_range(z, pglob, 43, note) and in_range(z, pglob, 44, vel)):
            continue
        i = z[41]
        iglob, iz = zones(sf["ibag"], sf["igen"], sf["inst"][i][1], sf["inst"][i + 1][1], 53)
        for y in iz:
            if in_range(y, iglob, 43, note) and in_range(y, iglob, 44, vel):
                out.add(y[53])
    return out


def vlq(n):
    """A MIDI variable-length quantity."""
    b = [n & 0x7F]
    n >>= 7
    while n:
        b.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(b))


def smf(program, note, vel, path):
    """Format-0 MIDI file: program change, note on at 0 s, note off at 2.0 s, end at 2.5 s."""
    # 480 ticks per quarter note, 500000 us per quarter: 960 ticks per second.
    ev = (vlq(0) + b"\xff\x51\x03" + (500000).to_bytes(3, "big")
          + vlq(0) + bytes([0xC0, program]) + vlq(0) + bytes([0x90, note, vel])
          + vlq(1920) + bytes([0x80, note, 0]) + vlq(480) + b"\xff\x2f\x00")
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480))
        f.write(b"MTrk" + struct.pack(">I", len(ev)) + ev)


def main():
    sf2, work = sys.argv[1], sys.argv[2]
    sf = read_sf2(sf2)
    split = {p: "train" for p in range(128)}
    for p in TEST:
        split[p] = "test"
    for p in VAL:
        split[p] = "val"
    assert len(set(TEST) | set(VAL)) == len(TEST) + len(VAL)

    notes, played, skipped = {}, {}, []
    for p in range(128):
        low = PROGRAM_LOW.get(p, FAMILY_LOW[p // 8])
        notes[p] = []
        for n in range(low, low + NOTES_PER_PROGRAM * NOTE_STEP, NOTE_STEP):
            for v in VELOCITIES:
                s = samples_played(sf, p, n, v)
                if s:
                    notes[p].append((n, v))
                    played[p, n, v] = s
                else:
                    skipped.append((p, n, v))

    # Group programs that share samples (union-find).
    parent = list(range(128))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    used = {p: set().union(*(played[p, n, v] for n, v in notes[p])) for p in range(128)}
    shared = []
    for p in range(128):
        for q in range(p + 1, 128):
            common = used[p] & used[q]
            if not common:
                continue
            fp = sum(bool(played[p, n, v] & common) for n, v in notes[p]) / len(notes[p])
            fq = sum(bool(played[q, n, v] & common) for n, v in notes[q]) / len(notes[q])
            linked = max(fp, fq) >= SHARE
            shared.append((p, q, fp, fq, linked))
            if linked:
                parent[find(p)] = find(q)
    groups = collections.defaultdict(list)
    for p in range(128):
        groups[find(p)].append(p)
    groups = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))

    bad = [g for g in groups if len({split[p] for p in g}) > 1]
    with open(os.path.join(work, "groups.txt"), "w") as f:
        f.write(f"Programs sharing samples (a shared sample sounds on >= {SHARE:.0%} of the "
                "rendered notes of one of them), grouped:\n")
        for g in groups:
            f.write(f"  {split[g[0]] if len({split[p] for p in g}) == 1 else 'MIXED'}: "
                    + ", ".join(f"{p} {GM_NAMES[p]}" for p in g) + "\n")
        f.write("Weaker sharing (below the threshold) between programs of different splits:\n")
        for p, q, fp, fq, linked in shared:
            if not linked and split[p] != split[q]:
                f.write(f"  {p} {GM_NAMES[p]} ({split[p]}, {fp:.0%} of its notes) ~ "
                        f"{q} {GM_NAMES[q]} ({split[q]}, {fq:.0%})\n")
        f.write(f"Notes outside a preset's key range (not rendered): {len(skipped)}\n")
        for p, n, v in skipped:
            f.write(f"  {p} {GM_NAMES[p]} note {n} velocity {v}\n")
    if bad:
        sys.stderr.write("groups straddling splits: " + repr(bad) + "\n")
        sys.exit(1)

    os.makedirs(os.path.join(work, "midi"), exist_ok=True)
    with open(os.path.join(work, "plan.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["split", "family", "program", "name", "note", "velocity", "midi", "wav"])
        for p in range(128):
            fam = FAMILIES[p // 8]
            for n, v in notes[p]:
                base = f"p{p:03d}_{GM_NAMES[p]}_n{n}_v{v}"
                mid = os.path.join(work, "midi", base + ".mid")
                smf(p, n, v, mid)
                w.writerow([split[p], fam, p, GM_NAMES[p], n, v, mid,
                            f"{split[p]}/{fam}/{base}.wav"])


if __name__ == "__main__":
    main()
