#!/usr/bin/env python3
"""Print the partition Apache Kafka's Java client chooses for each key.

Usage: murmur2_partition.py PARTITIONS KEY...

The Java client's default partitioner takes murmur2 of the key bytes (seed
0x9747b28c), clears the sign bit and reduces it modulo the partition count.
This is an independent re-implementation of that, for the tests to check
where pgkafka_join's records land.
"""
import sys


def murmur2(data: bytes) -> int:
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def main() -> None:
    partitions = int(sys.argv[1])
    for key in sys.argv[2:]:
        print(f"{(murmur2(key.encode()) & 0x7FFFFFFF) % partitions}\t{key}")


if __name__ == "__main__":
    main()
