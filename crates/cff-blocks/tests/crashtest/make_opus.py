"""Makes the malformed Ogg Opus files of tests/crashtest/opus/ from the fixtures.

Deterministic (fixed seeds), plain Python 3. Run from anywhere:
    python3 crates/cff-blocks/tests/crashtest/make_opus.py
Every file must make the reader return an error or a partial result, never panic, never
allocate beyond the limits. Each file stays under about 8 KB.
"""
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "opus")
OUT = os.path.join(HERE, "opus")
sys.path.insert(0, FIXTURES)

from oggtool import Page, crc32, lacing_for, parse_pages  # noqa: E402


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def join(pages, crc=True):
    return b"".join(p.to_bytes() if crc else p.to_bytes(crc=0xDEADBEEF) for p in pages)


def recrc(data):
    """Recomputes the CRC of every page found at the expected page positions, so that damage
    inside a page is not caught by the checksum."""
    data = bytearray(data)
    pos = 0
    while pos + 27 <= len(data) and data[pos:pos + 4] == b"OggS":
        n = data[pos + 26]
        if pos + 27 + n > len(data):
            break
        size = sum(data[pos + 27:pos + 27 + n])
        end = pos + 27 + n + size
        if end > len(data):
            break
        data[pos + 22:pos + 26] = b"\0\0\0\0"
        data[pos + 22:pos + 26] = struct.pack("<I", crc32(bytes(data[pos:end])))
        pos = end
    return bytes(data)


files = {}


def add(name, data):
    assert name not in files, name
    assert len(data) <= 8 * 1024 + 512, (name, len(data))
    files[name] = data


# The bases: a short complete stream (the first link of chained.opus, ~2.6 KB) and the first
# pages of repaged.opus (packets spanning pages), closed with EOS.
chained = fixture("chained.opus")
cpages = parse_pages(chained)
link0 = [p for p in cpages if p.serial == cpages[0].serial]
base = join(link0)
rpages = parse_pages(fixture("repaged.opus"))[:18]
while rpages[-1].lacing[-1] == 255:  # end on a page where a packet ends
    rpages.pop()
rpages[-1].htype |= 4
spanning = join(rpages)
head_page, tags_page = link0[0], link0[1]
audio_pages = link0[2:]

# --- Truncations -------------------------------------------------------------------------
for cut in [1, 4, 5, 20, 27, 28, 40, 47, 60, 300, 841, 900, len(base) - 1]:
    add(f"truncated_{cut:04d}.opus", base[:cut])
add("truncated_spanning_mid_packet.opus", spanning[: len(spanning) // 2])

# --- Flipped bits, CRC recomputed (the damage reaches the parser) and left wrong ---------
rng = random.Random(7845)
for i in range(10):
    data = bytearray(base)
    for _ in range(1 + i % 4):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    add(f"bitflip_recrc_{i:02d}.opus", recrc(bytes(data)))
for i in range(6):
    data = bytearray(spanning)
    for _ in range(1 + i):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    add(f"bitflip_badcrc_{i:02d}.opus", bytes(data))
# Header fields hit on purpose, CRC recomputed: segment count, a lacing value, the version,
# the header type, the granule position's top byte.
for name, offset, value in [
    ("segcount", 26, 0xFF),
    ("lacing", 27, 0xFF),
    ("version", 4, 1),
    ("htype", 5, 0xFF),
    ("granule_top", 13, 0x80),
]:
    data = bytearray(base)
    page3 = len(head_page.to_bytes()) + len(tags_page.to_bytes())
    data[page3 + offset] = value
    add(f"field_{name}.opus", recrc(bytes(data)))

# --- Segment tables that claim more than there is -----------------------------------------
# One page whose 255 lacing values of 255 claim a 65 KB body that is not there.
claim = Page(0, -1, head_page.serial, 2, [255] * 255, b"\x00" * 2000).to_bytes(crc=0)
add("segment_table_claims_65k.opus", join([head_page, tags_page]) + claim)
# A packet continued over 26 pages (lacing 255 on each) that never ends before EOS.
pages = [head_page, tags_page]
for k in range(26):
    htype = (1 if k else 0) | (4 if k == 25 else 0)
    pages.append(Page(htype, -1, head_page.serial, 2 + k, [255], bytes([0xFC]) + b"\x55" * 254))
add("packet_spans_26_pages_never_ends.opus", join(pages))
# Lacing values that add up to more than the file.
add("lacing_sum_past_end.opus", join([head_page, tags_page]) + Page(
    4, 960, head_page.serial, 2, [200, 200], b"\xfc" * 400).to_bytes()[:-150])

# --- Comment header lies -----------------------------------------------------------------
def tags_with(vendor_len=None, count=None, comment_len=None):
    body = bytearray(tags_page.body)
    if vendor_len is not None:
        body[8:12] = struct.pack("<I", vendor_len)
    vlen = struct.unpack("<I", tags_page.body[8:12])[0]
    at = 12 + vlen
    if count is not None:
        body[at:at + 4] = struct.pack("<I", count)
    if comment_len is not None:
        body[at + 4:at + 8] = struct.pack("<I", comment_len)
    p = Page(tags_page.htype, tags_page.granule, tags_page.serial, tags_page.seq,
             tags_page.lacing, bytes(body))
    return join([head_page, p] + audio_pages)


add("tags_vendor_4gb.opus", tags_with(vendor_len=0xFFFFFFFF))
add("tags_vendor_past_end.opus", tags_with(vendor_len=len(tags_page.body)))
add("tags_comment_count_4g.opus", tags_with(count=0xFFFFFFFF))
add("tags_comment_4gb.opus", tags_with(comment_len=0xFFFFFFF0))
bad_magic = Page(0, 0, tags_page.serial, 1, lacing_for(8), b"OpusTagz")
add("tags_bad_magic.opus", join([head_page, bad_magic] + audio_pages))

# --- Identification header lies ----------------------------------------------------------
def head_with(body):
    p = Page(2, 0, head_page.serial, 0, lacing_for(len(body)), body)
    return join([p, tags_page] + audio_pages)


hb = head_page.body
add("head_zero_channels.opus", head_with(hb[:9] + b"\x00" + hb[10:]))
add("head_version_16.opus", head_with(hb[:8] + b"\x10" + hb[9:]))
add("head_short.opus", head_with(hb[:12]))
add("head_family1_no_table.opus", head_with(hb[:18] + b"\x01"))
add("head_family1_bad_mapping.opus",
    head_with(hb[:9] + b"\x02" + hb[10:18] + b"\x01" + bytes([1, 0, 0, 9])))
add("head_family0_eight_channels.opus", head_with(hb[:9] + b"\x08" + hb[10:]))
add("head_family255_zero_streams.opus",
    head_with(hb[:9] + b"\x01" + hb[10:18] + b"\xff" + bytes([0, 0, 0])))
# OpusHead continued onto a second page, and a BOS page flagged as continued.
add("head_spans_pages.opus", join([
    Page(2, 0, head_page.serial, 0, [255], (hb * 14)[:255]),
    Page(1, 0, head_page.serial, 1, [10], b"\x00" * 10),
    tags_page] + audio_pages))
add("head_bos_continued.opus", join([
    Page(3, 0, head_page.serial, 0, head_page.lacing, hb), tags_page] + audio_pages))

# --- Not Opus ----------------------------------------------------------------------------
vorbis_id = b"\x01vorbis" + struct.pack("<IBIiiiBB", 0, 2, 44100, 0, 128000, 0, 0xB8, 1)
add("vorbis_only.opus", join([Page(2, 0, 99, 0, lacing_for(len(vorbis_id)), vorbis_id),
                              Page(4, 0, 99, 1, [5], b"\x03abcd")]))
add("vorbis_then_opus.opus", join([Page(2, 0, 99, 0, lacing_for(len(vorbis_id)), vorbis_id)])
    + base)
add("opushead_not_on_bos.opus", join([Page(0, 0, 5, 0, head_page.lacing, hb), tags_page]))

# --- Random bytes after OggS ---------------------------------------------------------------
rng = random.Random(3533)
for i in range(6):
    data = b""
    for _ in range(1 + i):
        data += b"OggS" + bytes(rng.randrange(256) for _ in range(rng.randrange(20, 600)))
    add(f"oggs_random_{i}.opus", data)
add("oggs_random_after_headers.opus", join([head_page, tags_page]) + b"OggS" + bytes(
    rng.randrange(256) for _ in range(3000)))
add("all_zeros.opus", bytes(4096))
add("oggs_only.opus", b"OggS")

# --- Audio packets the TOC rules reject ----------------------------------------------------
def audio_with(packets, granule=None):
    sizes = [len(p) for p in packets]
    lacing = [v for s in sizes for v in lacing_for(s)]
    g = granule if granule is not None else 960 * len(packets)
    return join([head_page, tags_page, Page(4, g, head_page.serial, 2, lacing, b"".join(packets))])


add("packet_empty.opus", audio_with([b"\xfc\x01", b""]))
add("packet_code3_zero_frames.opus", audio_with([b"\xfb\x00\x01"]))
add("packet_code3_63_frames.opus", audio_with([b"\xfb\x3f" + b"\x00" * 63]))
add("packet_code3_padding_overflow.opus", audio_with([b"\xfb\x41\xff\xff\xff\x01"]))
add("packet_code2_bad_length.opus", audio_with([b"\xfa\xfc\xff\x00"]))
add("packet_code1_odd.opus", audio_with([b"\xf9\x01\x02\x03"]))
add("packet_frame_too_long.opus", audio_with([b"\xf8" + b"\x00" * 1300]))

# --- Granule positions and sequence numbers ------------------------------------------------
def regranule(pages, values):
    return join([Page(p.htype, v, p.serial, p.seq, p.lacing, p.body)
                 for p, v in zip(pages, values)])


add("granule_all_minus_one.opus", regranule(link0, [-1] * len(link0)))
add("granule_max.opus", regranule(link0, [0, 0] + [2**63 - 1] * (len(link0) - 2)))
add("granule_min.opus", regranule(link0, [0, 0] + [-2**63] * (len(link0) - 2)))
add("granule_too_small_first_page.opus", regranule(link0, [0, 0] + [10] * (len(link0) - 2)))
add("granule_decreasing.opus",
    regranule(link0, [0, 0] + list(range(len(link0) * 1000, 0, -1000))[: len(link0) - 2]))
add("sequence_gaps.opus", join([Page(p.htype, p.granule, p.serial, p.seq * 7, p.lacing, p.body)
                                for p in link0]))
add("pages_reversed.opus", join([head_page, tags_page] + audio_pages[::-1]))
add("pages_duplicated.opus", join([head_page, tags_page] + audio_pages[:2] * 3))
add("continued_without_start.opus", join([head_page, tags_page] + [
    Page(p.htype | 1, p.granule, p.serial, p.seq, p.lacing, p.body) for p in audio_pages]))
add("empty_pages.opus", join([head_page, tags_page] + [
    Page(0, -1, head_page.serial, 2 + k, [], b"") for k in range(250)]))

# --- Several streams ----------------------------------------------------------------------
add("two_streams_same_serial.opus", fixture("multiplexed.opus").replace(
    struct.pack("<I", cpages[-1].serial), struct.pack("<I", cpages[0].serial)))
add("chained_second_link_truncated.opus", chained[: len(chained) - 600])
mux = parse_pages(fixture("multiplexed.opus"))
add("multiplexed_eos_missing.opus", join([Page(p.htype & ~4, p.granule, p.serial, p.seq,
                                               p.lacing, p.body) for p in mux]))
add("garbage_between_pages.opus", b"".join(
    p.to_bytes() + b"OggS\x00" + bytes([i]) * (i + 3) for i, p in enumerate(link0)))
add("spanning_badcrc_middle.opus", bytes(
    b if i != len(spanning) // 2 else b ^ 0x20 for i, b in enumerate(spanning)))

os.makedirs(OUT, exist_ok=True)
for old in os.listdir(OUT):
    if old.endswith(".opus"):
        os.remove(os.path.join(OUT, old))
for name, data in sorted(files.items()):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(files)} files, {sum(map(len, files.values()))} bytes")
