#!/usr/bin/env python3
"""wlbs bucket hash v1, written from the README's description alone (a second implementation
to check the Rust one). Prints the test vectors committed as
dataplane/src/filter/hash_vectors.txt, or the bucket of one client:

    scripts/hash-reference.py                          # the vectors
    scripts/hash-reference.py 192.0.2.10 none 198.51.100.7 40000 80
"""
import ipaddress
import sys

M = (1 << 64) - 1


def fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M
    k ^= k >> 33
    return k


def seed(cluster_ip):
    return fmix64(0x776C62735F763121 ^ int(ipaddress.IPv4Address(cluster_ip)))


KIND = {"none": 1, "single": 2, "network": 3}


def bucket(cluster_ip, affinity, client, cport, sport):
    s = seed(cluster_ip)
    addr = ipaddress.ip_address(client)
    kind = KIND[affinity]
    if affinity != "none":
        cport = sport = 0
    if addr.version == 4:
        a = int(addr)
        if affinity == "network":
            a &= 0xFFFFFF00
        words = [kind << 56 | 4 << 48, a << 32 | cport << 16 | sport]
    else:
        a = int(addr)
        if affinity == "network":
            a &= ~((1 << 72) - 1) & ((1 << 128) - 1)
        words = [kind << 56 | 6 << 48 | cport << 16 | sport, a >> 64, a & M]
    h = s
    for w in words:
        h = fmix64(h ^ w)
    return ((h >> 32) * 60) >> 32


def vectors():
    clusters = ["192.0.2.10", "203.0.113.1"]
    clients = [
        ("198.51.100.7", 40000, 80),
        ("198.51.100.7", 40001, 80),
        ("198.51.100.250", 1024, 443),
        ("203.0.113.99", 65535, 8080),
        ("0.0.0.0", 0, 0),
        ("255.255.255.255", 65535, 65535),
        ("2001:db8::1", 40000, 80),
        ("2001:db8:0:12ff:ffff::9", 5353, 53),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1, 2),
        ("::ffff:198.51.100.7", 40000, 80),
    ]
    print("# wlbs bucket hash v1 test vectors, from scripts/hash-reference.py")
    print("# cluster_ip affinity client client_port server_port bucket")
    for c in clusters:
        for aff in ("none", "single", "network"):
            for client, cp, sp in clients:
                print(c, aff, client, cp, sp, bucket(c, aff, client, cp, sp))


if __name__ == "__main__":
    if len(sys.argv) == 6:
        print(bucket(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    else:
        vectors()
