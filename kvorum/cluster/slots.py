"""Redis Cluster hash slots: CRC16 (XMODEM) of the key, or of its {hash tag}, modulo 16384.

A key's hash tag is the part between the first `{` and the first `}` after it,
when that part is not empty; keys sharing a tag share a slot, which is what
lets a multi-key command stay on one partition. This matches Redis' keyHashSlot
exactly, so clients that compute slots themselves (redis-py's RedisCluster,
redis-cli -c) agree with the server.
"""

from __future__ import annotations

SLOTS = 16384
SLOT_LAST = SLOTS - 1


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial value 0), as Redis' crc16.c."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that is hashed: its non-empty {tag}, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: bytes) -> int:
    return crc16(hash_tag(key)) & SLOT_LAST


# Redis' own test vector for its CRC16 (crc16.c): "123456789" -> 0x31C3.
assert crc16(b"123456789") == 0x31C3
