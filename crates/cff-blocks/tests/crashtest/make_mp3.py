#!/usr/bin/env python3
"""Writes the malformed MP3 corpus in tests/crashtest/mp3/ from the fixtures in
tests/fixtures/mp3/. Deterministic: the same fixtures give the same files.

usage: python3 make_mp3.py   (from anywhere; paths are relative to this script)

Every file must make the reader return an error or a partial result, never panic and never
allocate beyond the limits. Files are kept under 8 KB. Most start with an ID3v2 tag or a frame
sync, so that format detection hands them to the MP3 reader.
"""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "mp3")
OUT = os.path.join(HERE, "mp3")
MAX = 8000


def fixture(name):
    with open(os.path.join(FIX, name), "rb") as f:
        return f.read()


def syncsafe(n):
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def frame(word, length, fill=0):
    return struct.pack(">I", word) + bytes([fill]) * (length - 4)


def flip(data, pos, mask):
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def put(data, pos, chunk):
    b = bytearray(data)
    b[pos:pos + len(chunk)] = chunk
    return bytes(b)


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))
    files = {}

    # abr20_16k_mono.mp3: a 288-byte Xing frame at 0, then 72/108-byte MPEG-2 frames.
    abr = fixture("abr20_16k_mono.mp3")[:6000]
    # cbr128_44k_stereo_id3.mp3: a 158-byte ID3v2 tag, a 417-byte Info frame at 158, then
    # 417/418-byte MPEG-1 frames; an ID3v1 tag in its last 128 bytes.
    cbr = fixture("cbr128_44k_stereo_id3.mp3")
    tagged = cbr[:158 + 417 * 12] + cbr[-128:]
    crc = fixture("crc_48k_stereo.mp3")[:288 * 20]
    mpeg25 = fixture("mpeg25_8k_mono.mp3")
    spliced = fixture("spliced_garbage_ape.mp3")[:MAX]

    # Truncations at many points: inside a header, the Xing frame, the LAME tag, a frame.
    for n in [1, 2, 3, 4, 5, 13, 20, 40, 120, 155, 287, 288, 289, 290, 291, 300, 360, 400, 1001]:
        files[f"trunc_abr_{n:04}.mp3"] = abr[:n]
    for n in [3, 9, 10, 100, 158, 159, 162, 600, 1000]:
        files[f"trunc_id3_{n:04}.mp3"] = tagged[:n]
    files["trunc_crc_in_side_info.mp3"] = crc[:288 + 20]
    files["trunc_tagged_cut_id3v1.mp3"] = tagged[:-60]
    files["trunc_spliced_in_ape.mp3"] = spliced[:-170]

    # Flipped bits in frame headers (the third audio frame of abr20 sits at 288 + 72 + 108).
    h = 288 + 72 + 108
    files["bits_sync.mp3"] = flip(abr, h, 0x80)
    files["bits_version_reserved.mp3"] = flip(abr, h + 1, 0x18 ^ 0x08)
    files["bits_version_mpeg1.mp3"] = flip(abr, h + 1, 0x08)
    files["bits_layer_reserved.mp3"] = flip(abr, h + 1, 0x02)
    files["bits_layer2.mp3"] = flip(abr, h + 1, 0x06)
    files["bits_crc_appears.mp3"] = flip(abr, h + 1, 0x01)
    files["bits_bitrate_15.mp3"] = put(abr, h + 2, bytes([abr[h + 2] | 0xF0]))
    files["bits_bitrate_0.mp3"] = put(abr, h + 2, bytes([abr[h + 2] & 0x0F]))
    files["bits_rate_3.mp3"] = put(abr, h + 2, bytes([abr[h + 2] | 0x0C]))
    files["bits_padding.mp3"] = flip(abr, h + 2, 0x02)
    files["bits_stereo.mp3"] = flip(abr, h + 3, 0xC0)
    files["bits_emphasis_reserved.mp3"] = put(abr, h + 3, bytes([(abr[h + 3] & 0xFC) | 2]))
    files["bits_first_header.mp3"] = flip(abr, 2, 0xF0)
    files["bits_every_header_byte.mp3"] = bytes(
        b ^ 0x10 if i % 72 < 4 else b for i, b in enumerate(abr))

    # ID3v2 sizes that lie.
    body = tagged[10:]
    files["id3_size_256mb.mp3"] = b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + body
    files["id3_size_not_syncsafe.mp3"] = b"ID3\x03\x00\x00\x00\x00\x81\x00" + body
    files["id3_size_zero.mp3"] = b"ID3\x03\x00\x00\x00\x00\x00\x00" + body
    files["id3_size_into_frame.mp3"] = b"ID3\x03\x00\x00" + syncsafe(148 + 200) + body
    files["id3_footer_flag_no_footer.mp3"] = b"ID3\x04\x00\x10" + syncsafe(148) + body
    files["id3_version_ff.mp3"] = b"ID3\xff\x00\x00" + syncsafe(148) + body
    files["id3_many_empty_tags.mp3"] = b"ID3\x03\x00\x00\x00\x00\x00\x00" * 400 + abr[:2000]
    files["id3_only.mp3"] = tagged[:158]
    files["id3_header_only.mp3"] = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    files["id3_then_garbage.mp3"] = tagged[:158] + bytes(range(256)) * 8
    files["id3v2_footer_3di_at_end_lies.mp3"] = abr[:3000] + b"3DI\x04\x00\x10\x7f\x7f\x7f\x7f"

    # Tags at the end that lie.
    ape_head = b"APETAGEX" + struct.pack("<IIII", 2000, 0xFFFFFFF0, 1, 1 << 31) + bytes(8)
    files["ape_footer_size_huge.mp3"] = abr[:3000] + ape_head
    ape_small = b"APETAGEX" + struct.pack("<IIII", 2000, 8, 1, 0) + bytes(8)
    files["ape_footer_size_small.mp3"] = abr[:3000] + ape_small
    ape_hdr = b"APETAGEX" + struct.pack("<IIII", 2000, 0x7FFFFFFF, 1, (1 << 31) | (1 << 29))
    files["ape_header_first_huge.mp3"] = b"\xff\xf3" + ape_hdr + bytes(8) + abr[:2000]
    files["id3v1_only.mp3"] = b"TAG" + bytes(125)
    files["id3v1_twice.mp3"] = abr[:2000] + (b"TAG" + bytes(125)) * 2

    # Xing and VBRI headers that lie.
    files["xing_frames_max.mp3"] = put(abr, 13 + 8, b"\xff\xff\xff\xff")
    files["xing_flags_all_short_frame.mp3"] = (
        frame(0xFFF31400, 24)[:13] + b"Xing\x00\x00\x00\x0f" + bytes(3) + abr[288:3000])
    vbri = bytearray(frame(0xFFF348C4, 144))
    vbri[36:40] = b"VBRI"
    files["vbri_frame.mp3"] = bytes(vbri) + abr[288:2000]
    files["vbri_cut.mp3"] = bytes(vbri[:40])

    # Synthetic streams.
    files["layer2_stream.mp3"] = frame(0xFFFD9064, 522) * 6
    files["layer1_stream.mp3"] = frame(0xFFFF9064, 312) * 6
    files["free_format.mp3"] = (frame(0xFFFB0064, 400) * 6)
    files["free_format_lone.mp3"] = frame(0xFFFB0064, 400) + bytes(3000)
    files["mixed_versions.mp3"] = (frame(0xFFF348C4, 144) + frame(0xFFFB9064, 417)) * 5
    files["mono_stereo_alternating.mp3"] = (frame(0xFFF348C4, 144) + frame(0xFFF34804, 144)) * 10
    files["tiny_frames_8kbps_24k.mp3"] = frame(0xFFF31400, 24) * 300
    files["tiny_frames_with_garbage.mp3"] = (frame(0xFFF31400, 24) + b"\x00") * 250
    files["mpeg25_cut_every_frame.mp3"] = b"".join(
        mpeg25[i:i + 100] for i in range(0, 144 * 40, 144))

    # Degenerate inputs.
    files["all_ff.mp3"] = b"\xff" * 4096
    files["sync_pairs.mp3"] = b"\xff\xf3" * 2048
    files["header_only.mp3"] = b"\xff\xfb\x90\x64"
    files["header_plus_ten.mp3"] = b"\xff\xfb\x90\x64" + bytes(10)
    files["three_bytes.mp3"] = b"\xff\xfb\x90"
    files["id3_three_bytes.mp3"] = b"ID3"
    rng = random.Random(11172)
    files["random_after_sync.mp3"] = b"\xff\xfb\x90\x64" + bytes(
        rng.randrange(256) for _ in range(4000))
    files["random_syncs.mp3"] = b"\xff\xf3" + bytes(
        rng.choice([0xFF, 0xF3, 0xFB, 0xE3, 0x48, 0xC4, 0x00]) for _ in range(6000))
    rng = random.Random(13818)
    noisy = bytearray(abr)
    for _ in range(60):
        noisy[rng.randrange(len(noisy))] = rng.randrange(256)
    files["random_bytes_in_stream.mp3"] = bytes(noisy)

    for name, data in sorted(files.items()):
        assert len(data) <= MAX, (name, len(data))
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(files)} files in {OUT}")


if __name__ == "__main__":
    main()
