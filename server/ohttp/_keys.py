"""OHTTP key configurations (RFC 9458 §3) and the gateway's in-memory private key."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from attest.errors import ParseError

__all__ = [
    "AES_128_GCM",
    "CHACHA20_POLY1305",
    "HKDF_SHA256",
    "X25519_KEM",
    "AeadParams",
    "KeyConfig",
    "ServerKey",
    "Suite",
    "aead_params",
    "encode_key_configs",
    "hpke_suite",
    "parse_key_configs",
]

X25519_KEM = 0x0020
HKDF_SHA256 = 0x0001
AES_128_GCM = 0x0001
CHACHA20_POLY1305 = 0x0003

X25519_NPK = 32
NENC = {X25519_KEM: X25519_NPK}


@dataclass(frozen=True, slots=True)
class Suite:
    """One (KDF, AEAD) pair of a key configuration."""

    kdf_id: int
    aead_id: int

    @property
    def supported(self) -> bool:
        return self.kdf_id == HKDF_SHA256 and self.aead_id in _AEADS


@dataclass(frozen=True, slots=True)
class AeadParams:
    """What the OHTTP response layer needs to know about an AEAD."""

    nk: int
    nn: int
    cls: type[AESGCM] | type[ChaCha20Poly1305]

    @property
    def entropy_len(self) -> int:
        return max(self.nk, self.nn)


TAG_LEN = 16
_AEADS: dict[int, AeadParams] = {
    AES_128_GCM: AeadParams(16, 12, AESGCM),
    CHACHA20_POLY1305: AeadParams(32, 12, ChaCha20Poly1305),
}

DEFAULT_SUITES = (Suite(HKDF_SHA256, AES_128_GCM), Suite(HKDF_SHA256, CHACHA20_POLY1305))


def aead_params(suite: Suite) -> AeadParams:
    return _AEADS[suite.aead_id]


# CipherSuite.new builds KEM/KDF/AEAD objects; they are stateless, so build each once.
_HPKE_SUITES: dict[Suite, Any] = {
    s: CipherSuite.new(KEMId(X25519_KEM), KDFId(s.kdf_id), AEADId(s.aead_id))
    for s in DEFAULT_SUITES
}


def hpke_suite(suite: Suite) -> Any:
    """The pyhpke CipherSuite for X25519 with ``suite``; KeyError when unsupported."""
    return _HPKE_SUITES[suite]


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One key configuration as RFC 9458 §3 encodes it."""

    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[Suite, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 0xFF:
            raise ValueError(f"key_id must fit one byte, got {self.key_id}")
        if not 0 <= self.kem_id <= 0xFFFF:
            raise ValueError(f"kem_id must fit two bytes, got {self.kem_id}")
        if not self.suites:
            raise ValueError("a key configuration needs at least one suite")
        npk = NENC.get(self.kem_id)
        if npk is not None and len(self.public_key) != npk:
            raise ValueError(f"public key must be {npk} bytes, got {len(self.public_key)}")

    def encode(self) -> bytes:
        algs = b"".join(struct.pack(">HH", s.kdf_id, s.aead_id) for s in self.suites)
        return (
            struct.pack(">BH", self.key_id, self.kem_id)
            + self.public_key
            + struct.pack(">H", len(algs))
            + algs
        )

    @classmethod
    def parse(cls, data: bytes) -> KeyConfig:
        config, end = _parse_one(data, 0)
        if end != len(data):
            raise ParseError(f"key config: {len(data) - end} trailing bytes")
        return config

    def select_suite(self, suite: Suite | None = None) -> Suite:
        """``suite`` if offered, else the first offered suite this module implements."""
        if self.kem_id != X25519_KEM:
            raise ValueError(f"unsupported KEM 0x{self.kem_id:04x}")
        if suite is not None:
            if suite not in self.suites or not suite.supported:
                raise ValueError(f"suite {suite} is not offered by key {self.key_id}")
            return suite
        for offered in self.suites:
            if offered.supported:
                return offered
        raise ValueError(f"key {self.key_id} offers no supported suite")


def _parse_one(data: bytes, pos: int) -> tuple[KeyConfig, int]:
    if len(data) - pos < 3:
        raise ParseError("key config: truncated header")
    key_id, kem_id = struct.unpack_from(">BH", data, pos)
    npk = NENC.get(kem_id)
    if npk is None:
        # Without knowing Npk the rest of the configuration cannot be delimited.
        raise ParseError(f"key config: unknown KEM 0x{kem_id:04x}")
    pos += 3
    if len(data) - pos < npk + 2:
        raise ParseError("key config: truncated public key")
    public_key = bytes(data[pos : pos + npk])
    pos += npk
    (algs_len,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if algs_len == 0 or algs_len % 4:
        raise ParseError(
            f"key config: algorithm list length {algs_len} is not a positive multiple of 4"
        )
    if len(data) - pos < algs_len:
        raise ParseError("key config: truncated algorithm list")
    suites = tuple(
        Suite(kdf, aead) for kdf, aead in struct.iter_unpack(">HH", data[pos : pos + algs_len])
    )
    pos += algs_len
    return KeyConfig(key_id, kem_id, public_key, suites), pos


def encode_key_configs(configs: Sequence[KeyConfig]) -> bytes:
    """``application/ohttp-keys``: each configuration behind a two-byte length."""
    out = bytearray()
    for config in configs:
        encoded = config.encode()
        out += struct.pack(">H", len(encoded))
        out += encoded
    return bytes(out)


def parse_key_configs(data: bytes) -> list[KeyConfig]:
    """Parse ``application/ohttp-keys``; one encoding error rejects the list (RFC 9458 §3.2)."""
    configs: list[KeyConfig] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise ParseError("ohttp-keys: truncated length prefix")
        (length,) = struct.unpack_from(">H", data, pos)
        pos += 2
        end = pos + length
        if end > len(data):
            raise ParseError("ohttp-keys: length prefix runs past the end")
        config, used = _parse_one(data[:end], pos)
        if used != end:
            raise ParseError("ohttp-keys: configuration shorter than its length prefix")
        configs.append(config)
        pos = end
    if not configs:
        raise ParseError("ohttp-keys: no key configuration")
    return configs


class ServerKey:
    """The gateway's X25519 private key, held in memory only.

    Nothing here serialises the private half: no method returns it, and pickling or
    copying refuses, so it cannot reach a disk or a log by accident.
    """

    __slots__ = ("_config", "_private")
    _config: KeyConfig
    _private: Any

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use ServerKey.generate(key_id)")

    @classmethod
    def generate(cls, key_id: int, *, suites: Sequence[Suite] = DEFAULT_SUITES) -> ServerKey:
        return cls._from_private_key(key_id, X25519PrivateKey.generate(), suites)

    @classmethod
    def _from_private_bytes(
        cls, key_id: int, private_key: bytes, *, suites: Sequence[Suite] = DEFAULT_SUITES
    ) -> ServerKey:
        """Known-answer tests only: a gateway key with published private bytes."""
        return cls._from_private_key(
            key_id, X25519PrivateKey.from_private_bytes(private_key), suites
        )

    @classmethod
    def _from_private_key(
        cls, key_id: int, private_key: X25519PrivateKey, suites: Sequence[Suite]
    ) -> ServerKey:
        unsupported = [s for s in suites if not s.supported]
        if unsupported:
            raise ValueError(f"unsupported suites for a server key: {unsupported}")
        self = object.__new__(cls)
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._config = KeyConfig(key_id, X25519_KEM, public, tuple(suites))
        self._private = KEMKey.from_pyca_cryptography_key(private_key)
        return self

    @property
    def config(self) -> KeyConfig:
        return self._config

    @property
    def key_id(self) -> int:
        return self.config.key_id

    @property
    def _hpke_private_key(self) -> Any:
        return self._private

    def __repr__(self) -> str:
        return f"ServerKey(key_id={self.key_id}, public_key={self.config.public_key.hex()})"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("ServerKey holds a private key and is never serialised")

    def __copy__(self) -> NoReturn:
        raise TypeError("ServerKey is not copied")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("ServerKey is not copied")
