#!/usr/bin/env python3
"""pcap_search.py: looks for a prompt's traces in a packet capture of the cluster's bridge.

Reads a classic pcap file (tcpdump -w, Ethernet), puts every TCP connection's payload back
together per direction (in sequence order, retransmissions once), and searches each stream for
the canary text and for the prompt's token ids as they travel in a step plan: 32-bit
little-endian integers back to back. Prints one JSON object:
  {"packets", "tcp_payload_bytes", "streams", "text_found", "ids_found", "ids_pattern_bytes"}
Used by test_cluster_wire.sh; standard library only, so it is independent of alem.
"""
import argparse
import json
import struct
import sys


def read_packets(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        sys.exit("not a pcap file: " + path)
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        sys.exit("expected an Ethernet capture (link type 1), got %d" % linktype)
    offset = 24
    while offset + 16 <= len(data):
        _, _, captured, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        offset += 16
        yield data[offset:offset + captured]
        offset += captured


def tcp_segment(frame):
    """(flow, sequence number, payload) of an IPv4 TCP frame, or None."""
    if len(frame) < 14 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    tcp = ip[ihl:total]
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack(">HHI", tcp[:8])
    data_offset = (tcp[12] >> 4) * 4
    flow = (ip[12:16], sport, ip[16:20], dport)
    return flow, seq, tcp[data_offset:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pcap")
    parser.add_argument("--text", required=True, help="canary text to look for")
    parser.add_argument("--ids", required=True, help="comma-separated token ids of the prompt")
    args = parser.parse_args()
    ids = [int(t) for t in args.ids.split(",") if t]
    pattern = b"".join(struct.pack("<i", t) for t in ids)
    text = args.text.encode()

    packets = 0
    payload_bytes = 0
    segments = {}
    for frame in read_packets(args.pcap):
        packets += 1
        seg = tcp_segment(frame)
        if seg is None or not seg[2]:
            continue
        flow, seq, payload = seg
        payload_bytes += len(payload)
        segments.setdefault(flow, {}).setdefault(seq, payload)

    text_found = ids_found = False
    for by_seq in segments.values():
        # Sequence numbers wrap at 2^32; order them relative to the first one seen.
        first = next(iter(by_seq))
        stream = b"".join(p for _, p in sorted(by_seq.items(),
                                               key=lambda kv: (kv[0] - first) % (1 << 32)))
        text_found = text_found or text in stream
        ids_found = ids_found or (len(pattern) > 0 and pattern in stream)
    print(json.dumps({"packets": packets, "tcp_payload_bytes": payload_bytes,
                      "streams": len(segments), "text_found": text_found,
                      "ids_found": ids_found, "ids_pattern_bytes": len(pattern)}))


if __name__ == "__main__":
    main()
