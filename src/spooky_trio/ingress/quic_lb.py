"""QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21, "Server ID Encoding in
Connection IDs"): a CID that tells a stateless load balancer which server owns it.

```
QUIC-LB Connection ID { First Octet (8), Plaintext Block (40..152) [, worker octet (8)] }
First Octet { Config Rotation (3), CID Len or Random Bits (5) }
Plaintext Block { Server ID (8..), Nonce (32..) }
```

Three encodings, exactly as the draft specifies them and proven by its test vectors
(tests/ingress/test_quic_lb.py): *plaintext* (no key), *single-pass* (a key, and server ID +
nonce are exactly 16 octets: one AES-128-ECB block) and *four-pass* (a key, any other length:
a four-round Feistel network whose round function is AES-128-ECB on ``expand(...)``). AES is
``cryptography``'s; the Feistel network is the draft's protocol logic on top of it.

Process demultiplexing (the draft's non-normative section "Server Process Demultiplexing",
first and fourth approaches): with ``workers > 1`` the worker index is written in the
first octet's five random bits (or, when those encode the length, in one octet appended
after the ciphertext, which the draft allows: "The server MAY append additional bytes to
the connection ID ... for its own use"), and it is also the nonce's first octet, so that two
workers never produce the same plaintext. A load balancer sees the worker octet as
ordinary CID bytes (or nonce); the kernel's steering program (ingress/steering.py) reads it
without any key. The privacy cost (an observer learns which of N processes owns a CID) is
documented in docs/fleet.md.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["QuicLbCodec", "QuicLbError", "WORKER_BITS_LIMIT", "expand"]

#: workers the five "random" bits of the first octet can number
WORKER_BITS_LIMIT = 32
#: the one config rotation codepoint a configuration may not use (the draft's "unroutable")
UNROUTABLE_CONFIG_ID = 0b111


class QuicLbError(ValueError):
    """A QUIC-LB setting outside the draft's limits (message says which)."""


def expand(length: int, pass_number: int, half: bytes) -> bytes:
    """The draft's ``expand(length, pass, input_bytes)``: ``half`` zero-padded to 14 octets,
    then ``length`` and ``pass``: one AES block."""
    return half + bytes(14 - len(half)) + bytes((length, pass_number))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[: len(a)], "big")).to_bytes(len(a), "big")


class QuicLbCodec:
    """Encodes and decodes the CIDs of one QUIC-LB configuration (one server ID).

    ``key`` (16 octets) or None for plaintext CIDs. ``worker`` / ``workers``: this process's
    index and how many there are (see the module docstring); ``workers == 1`` writes random
    bits where the index would go, as the draft asks of a server without demultiplexing.
    """

    def __init__(
        self,
        *,
        config_id: int,
        server_id: bytes,
        nonce_length: int,
        key: bytes | None = None,
        self_encode_length: bool = False,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        if not 0 <= config_id < UNROUTABLE_CONFIG_ID:
            raise QuicLbError("config_id must be 0..6 (7 is the draft's unroutable codepoint)")
        if len(server_id) < 1:
            raise QuicLbError("server_id must be at least one octet")
        if nonce_length < 4:
            raise QuicLbError("nonce_length must be at least 4")
        if len(server_id) + nonce_length > 19:
            raise QuicLbError("server_id and nonce_length must sum to 19 octets or less")
        if key is not None and len(key) != 16:
            raise QuicLbError("the key must be 16 octets (AES-128)")
        self.appended_worker_octet = self_encode_length and workers > 1
        if self.appended_worker_octet and len(server_id) + nonce_length > 18:
            raise QuicLbError("with self_encode_length and workers, server_id and nonce_length must sum to 18 or less")
        if workers > (256 if self.appended_worker_octet else WORKER_BITS_LIMIT):
            raise QuicLbError(f"{workers} workers do not fit the CID's worker field")
        self.config_id = config_id
        self.server_id = server_id
        self.nonce_length = nonce_length
        self.plaintext_length = len(server_id) + nonce_length
        self.self_encode_length = self_encode_length
        self.worker = worker
        self.workers = workers
        #: the whole CID, first octet and worker octet included
        self.length = 1 + self.plaintext_length + (1 if self.appended_worker_octet else 0)
        self.has_key = key is not None
        #: what a reload compares (the key only as a digest: never kept in the clear here)
        self.signature: tuple[object, ...] = (
            "quic-lb", config_id, server_id, nonce_length, self_encode_length, worker, workers,
            hashlib.sha256(key).digest() if key is not None else None,
        )
        self._encrypt: CipherContext | None = None
        self._decrypt: CipherContext | None = None
        if key is not None:
            cipher = Cipher(algorithms.AES(key), modes.ECB())
            self._encrypt = cipher.encryptor()
            self._decrypt = cipher.decryptor()

    # --- what the worker steering reads (ingress/steering.py) ---

    @property
    def worker_offset(self) -> int:
        """Offset in the CID of the octet holding the worker index."""
        return self.length - 1 if self.appended_worker_octet else 0

    @property
    def worker_mask(self) -> int:
        return 0xFF if self.appended_worker_octet else 0x1F

    def worker_of(self, cid: bytes) -> int | None:
        """The worker index a CID of this length names, None if it names none. The config
        rotation bits are not compared: CIDs of the previous config (a reload that changed
        ``config_id``) keep their worker until the peer retired them."""
        if self.workers == 1 or len(cid) != self.length:
            return None
        index = cid[self.worker_offset] & self.worker_mask
        return index if index < self.workers else None

    # --- encoding ---

    def new_cid(self) -> bytes:
        """A fresh CID: random nonce (led by the worker index when there are workers)."""
        nonce = os.urandom(self.nonce_length)
        if self.workers > 1:
            nonce = bytes((self.worker,)) + nonce[1:]
        return self.encode(nonce, random_bits=nonce[-1] if self.has_key else os.urandom(1)[0])

    def first_octet(self, random_bits: int) -> int:
        if self.self_encode_length:
            low = self.length - 1  # the octets after the first, worker octet included
        elif self.workers > 1:
            low = self.worker
        else:
            low = random_bits
        return (self.config_id << 5) | (low & 0x1F)

    def encode(self, nonce: bytes, *, random_bits: int = 0) -> bytes:
        """The CID for ``nonce`` (``random_bits``: the first octet's low bits when they are
        neither the length nor the worker index)."""
        if len(nonce) != self.nonce_length:
            raise QuicLbError("nonce of the wrong length")
        block = self.encrypt_block(self.server_id + nonce)
        cid = bytes((self.first_octet(random_bits),)) + block
        if self.appended_worker_octet:
            cid += bytes((self.worker,))
        return cid

    def encrypt_block(self, plaintext: bytes) -> bytes:
        """Server ID + nonce -> the CID's octets after the first (the draft's server actions)."""
        if self._encrypt is None:
            return plaintext
        if len(plaintext) == 16:
            return self._encrypt.update(plaintext)
        return self._feistel(plaintext, (1, 2, 3, 4), self._encrypt)

    # --- decoding (what a load balancer does) ---

    def decrypt_block(self, block: bytes) -> bytes:
        """The inverse of :meth:`encrypt_block`: server ID + nonce."""
        if self._decrypt is None or self._encrypt is None:
            return block
        if len(block) == 16:
            return self._decrypt.update(block)
        return self._feistel(block, (4, 3, 2, 1), self._encrypt)

    def decode(self, cid: bytes) -> tuple[bytes, bytes] | None:
        """(server ID, nonce) of a CID of this configuration, None for another config ID or
        length."""
        if len(cid) != self.length or cid[0] >> 5 != self.config_id:
            return None
        plain = self.decrypt_block(cid[1 : 1 + self.plaintext_length])
        sid = len(self.server_id)
        return plain[:sid], plain[sid:]

    def _feistel(self, data: bytes, passes: tuple[int, int, int, int], aes: CipherContext) -> bytes:
        """The draft's four-pass network; encryption runs passes 1-4, decryption 4-1 (the
        round function is always AES *encryption*, as in any Feistel network)."""
        update = aes.update
        length = len(data)
        half = (length + 1) // 2
        odd = length % 2 == 1
        left, right = bytearray(data[:half]), bytearray(data[length - half :])
        if odd:
            left[-1] &= 0xF0
            right[0] &= 0x0F
        for number in passes:
            if number % 2 == 1:  # passes 1 and 3 change the right half from the left
                right = bytearray(_xor(bytes(right), update(expand(length, number, bytes(left)))))
                if odd:
                    right[0] &= 0x0F
            else:
                left = bytearray(_xor(bytes(left), update(expand(length, number, bytes(right)))))
                if odd:
                    left[-1] &= 0xF0
        if odd:
            return bytes(left[:-1]) + bytes((left[-1] | right[0],)) + bytes(right[1:])
        return bytes(left + right)
