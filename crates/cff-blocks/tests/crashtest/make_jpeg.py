#!/usr/bin/env python3
"""Writes the malformed JPEG corpus in jpeg/ from the fixtures in ../fixtures/jpeg/.

Every file is a deterministic mutation of a valid fixture (seeded, no randomness between
runs). Readers must return an error or a partial result on each, never panic, and never
allocate beyond their limits. Run from anywhere: python3 make_jpeg.py
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "jpeg")
OUT = os.path.join(HERE, "jpeg")


def load(name):
    with open(os.path.join(FIX, name), "rb") as f:
        return bytearray(f.read())


def segments(data):
    """(marker, offset of 0xFF, segment end) for every marker segment up to the first SOS."""
    out = []
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF
        code = data[i + 1]
        length = data[i + 2] << 8 | data[i + 3]
        out.append((code, i, i + 2 + length))
        i += 2 + length
        if code == 0xDA:
            break
    return out


def seg(data, code, nth=0):
    found = [s for s in segments(data) if s[0] == code]
    return found[nth]


def scan_start(data):
    return seg(data, 0xDA)[2]


def eoi(data):
    return len(data) - 2


files = {}


def put(name, data):
    assert len(data) < 8192, name
    files[name] = bytes(data)


gray = load("gray28_q75.jpg")
gray_rst = load("gray28_q50_rst1.jpg")
color = load("c420_q75.jpg")
color_rst = load("c420_q50_rst1.jpg")
scans = load("c420_scans_each.jpg")

# --- Truncations -----------------------------------------------------------------------------
put("trunc_soi_only.jpg", gray[:2])
put("trunc_in_app0.jpg", gray[: seg(gray, 0xE0)[1] + 7])
put("trunc_in_dqt.jpg", gray[: seg(gray, 0xDB)[1] + 30])
put("trunc_in_sof.jpg", gray[: seg(gray, 0xC0)[1] + 9])
put("trunc_in_dht.jpg", gray[: seg(gray, 0xC4, 1)[1] + 40])
put("trunc_in_sos.jpg", gray[: seg(gray, 0xDA)[1] + 6])
put("trunc_after_sos.jpg", gray[: scan_start(gray)])
put("trunc_scan_start.jpg", gray[: scan_start(gray) + 3])
put("trunc_scan_middle.jpg", gray[: (scan_start(gray) + eoi(gray)) // 2])
put("trunc_before_eoi.jpg", gray[:-2])
put("trunc_half_eoi.jpg", gray[:-1])
put("trunc_color_rst_middle.jpg", color_rst[: (scan_start(color_rst) + eoi(color_rst)) // 2])
put("trunc_second_scan.jpg", scans[: seg(scans, 0xDA)[2] + (len(scans) - seg(scans, 0xDA)[2]) // 2])
put("empty.jpg", b"")

# --- DHT ------------------------------------------------------------------------------------
d = gray[:]
_, at, _ = seg(d, 0xC4)
d[at + 5] = 255  # first count: 255 codes of length 1
put("dht_count_overflow.jpg", d)
d = gray[:]
c = d[at + 5] + d[at + 6] + d[at + 7]
d[at + 5 : at + 8] = bytes([3, 0, c - 3])  # three codes of length 1, same number of values
put("dht_code_space_overflow.jpg", d)
d = gray[:]
d[at + 4] = 0x20  # class 2
put("dht_bad_class.jpg", d)
d = gray[:]
d[at + 4] = 0x07  # destination 7
put("dht_bad_destination.jpg", d)
d = gray[:]
d[at + 3] -= 5  # length shorter than its counts say
put("dht_length_short.jpg", d)
d = gray[:]
rng = random.Random(1)
_, at, end = seg(d, 0xC4, 1)
for _ in range(6):
    k = rng.randrange(at + 5, end)
    d[k] ^= 1 << rng.randrange(8)
put("dht_flipped_bits.jpg", d)
d = color[:]
_, at, end = seg(d, 0xC4, 1)
# AC table 0 replaced by one without codes: the scan cannot decode a single AC code.
put("dht_no_codes.jpg", d[:at] + b"\xff\xc4\x00\x13\x10" + bytes(16) + d[end:])

# --- SOF ------------------------------------------------------------------------------------
def sof_patch(base, offset, values, name):
    d = base[:]
    _, at, _ = seg(d, 0xC0)
    d[at + offset : at + offset + len(values)] = bytes(values)
    put(name, d)


sof_patch(gray, 5, [0xFF, 0xFF, 0xFF, 0xFF], "sof_65535x65535.jpg")
sof_patch(gray, 5, [0, 0], "sof_height_zero.jpg")
sof_patch(gray, 7, [0, 0], "sof_width_zero.jpg")
sof_patch(gray, 4, [16], "sof_precision_16.jpg")
sof_patch(gray, 9, [0], "sof_zero_components.jpg")
sof_patch(gray, 9, [5], "sof_five_components.jpg")
sof_patch(gray, 11, [0xFF], "sof_sampling_15x15.jpg")
sof_patch(gray, 11, [0x00], "sof_sampling_zero.jpg")
sof_patch(gray, 12, [9], "sof_quant_table_9.jpg")
sof_patch(gray, 3, [0x07], "sof_length_short.jpg")
sof_patch(color, 13, [1], "sof_duplicate_ids.jpg")
sof_patch(color, 11, [0x44], "sof_color_sampling_4x4.jpg")
sof_patch(color, 11, [0x34], "sof_sampling_3x4_too_many_units.jpg")
d = gray[:]
_, at, end = seg(d, 0xC0)
put("sof_missing.jpg", d[:at] + d[end:])
d = gray[:]
_, at, end = seg(d, 0xC0)
put("sof_twice.jpg", d[:end] + d[at:end] + d[end:])

# --- SOS ------------------------------------------------------------------------------------
def sos_patch(base, offset, values, name):
    d = base[:]
    _, at, _ = seg(d, 0xDA)
    d[at + offset : at + offset + len(values)] = bytes(values)
    put(name, d)


sos_patch(gray, 5, [9], "sos_unknown_component.jpg")
sos_patch(gray, 6, [0x33], "sos_undefined_tables.jpg")
sos_patch(gray, 6, [0x55], "sos_table_destination_5.jpg")
sos_patch(gray, 4, [0], "sos_zero_components.jpg")
sos_patch(gray, 4, [5], "sos_five_components.jpg")
sos_patch(gray, 8, [0], "sos_spectral_end_0.jpg")
sos_patch(gray, 3, [9], "sos_length_long.jpg")
d = gray[:]
for code in (0xC4, 0xC4):
    _, at, end = seg(d, code)
    d = d[:at] + d[end:]
put("dht_missing.jpg", d)

# --- Other segments ------------------------------------------------------------------------
d = gray[:]
_, at, _ = seg(d, 0xDB)
d[at + 4] = 0x30  # Pq = 3
put("dqt_bad_precision.jpg", d)
d = gray[:]
d[at + 3] = 40  # a DQT shorter than its table
put("dqt_short.jpg", d)
d = gray[:]
_, at, _ = seg(d, 0xE0)
d[at + 2 : at + 4] = bytes([0, 1])
put("app0_length_1.jpg", d)
d = gray[:]
d[at + 2 : at + 4] = bytes([0xFF, 0xFF])
put("app0_length_past_end.jpg", d)
d = gray_rst[:]
_, at, _ = seg(d, 0xDD)
d[at + 3] = 6
put("dri_length_6.jpg", d)
put("second_soi.jpg", gray[:2] + gray[:2] + gray[2:])
put("soi_eoi_only.jpg", b"\xff\xd8\xff\xd9")
rng = random.Random(2)
put("random_after_soi.jpg", b"\xff\xd8\xff" + bytes(rng.randrange(256) for _ in range(400)))
rng = random.Random(3)
put("random_segments.jpg", b"\xff\xd8\xff\xe0\x00\x10" + bytes(rng.randrange(256) for _ in range(600)))
d = gray[:]
_, at, _ = seg(d, 0xC0)
put("garbage_between_segments.jpg", d[:at] + b"\x12\x34" + d[at:])

# --- Scan data ------------------------------------------------------------------------------
for i, base_name in enumerate(["gray28_q75.jpg", "c420_q75.jpg", "c420_q50_rst1.jpg"]):
    base = load(base_name)
    start, end = scan_start(base), eoi(base)
    for j in range(3):
        d = base[:]
        rng = random.Random(100 + 10 * i + j)
        for _ in range(1 + j * 3):
            k = rng.randrange(start, end)
            if d[k] == 0xFF or d[k - 1] == 0xFF:
                continue  # keep markers and stuffing: desynchronise the codes only
            d[k] ^= 1 << rng.randrange(8)
        put("scan_flipped_bits_%s_%d.jpg" % (base_name[:-4], j), d)
d = gray[:]
start = scan_start(d)
put("scan_all_ones.jpg", d[:start] + b"\xff\x00" * 300 + b"\xff\xd9")
put("scan_all_zeros.jpg", d[:start] + b"\x00" * 300 + b"\xff\xd9")
put("scan_empty.jpg", d[:start] + b"\xff\xd9")
put("scan_eoi_inside.jpg", d[: start + 20] + b"\xff\xd9" + d[start + 20 :])
put("scan_dht_marker_inside.jpg", d[: start + 20] + b"\xff\xc4\x00\x02" + d[start + 20 :])
rng = random.Random(4)
put("scan_random_bytes.jpg", d[:start] + bytes(rng.choice(range(255)) for _ in range(500)) + b"\xff\xd9")

# --- Restart markers ------------------------------------------------------------------------
d = gray_rst[:]
k = d.index(b"\xff\xd2", scan_start(d))
d[k + 1] = 0xD5
put("rst_out_of_order.jpg", d)
d = gray_rst[:]
k = d.index(b"\xff\xd3", scan_start(d))
put("rst_missing.jpg", d[:k] + d[k + 2 :])
d = gray_rst[:]
k = d.index(b"\xff\xd3", scan_start(d))
put("rst_doubled.jpg", d[:k] + b"\xff\xd3" + d[k:])
d = gray[:]
k = scan_start(d) + 10
put("rst_without_dri.jpg", d[:k] + b"\xff\xd0" + d[k:])
d = gray_rst[:]
_, at, _ = seg(d, 0xDD)
d[at + 4 : at + 6] = bytes([0, 2])  # DRI says 2 MCUs per interval, the data has 1
put("dri_mismatch.jpg", d)

os.makedirs(OUT, exist_ok=True)
for old in os.listdir(OUT):
    if old.endswith(".jpg"):
        os.remove(os.path.join(OUT, old))
for name, data in sorted(files.items()):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print("%d files in %s" % (len(files), OUT))
