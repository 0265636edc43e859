"""Client-side log verification against an independent, naive RFC 9162 recomputation."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, VerificationError
from attest.tlog import (
    Checkpoint,
    VerifierKey,
    leaf_hash,
    node_hash,
    open_checkpoint,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
    verify_log_entry,
)
from cvm_boot.tlog import TransparencyLog, bundle_entry, generate_log_key

# --- independent recomputation: RFC 9162 section 2.1 definitions, written out literally ---------


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return _sha(b"")
    if len(d) == 1:
        return _sha(b"\x00" + d[0])
    k = _k(len(d))
    return _sha(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


DATA = [f"entry-{i}".encode() for i in range(64)]


@pytest.fixture(scope="module")
def log64(tmp_path_factory: pytest.TempPathFactory) -> TransparencyLog:
    skey, _ = generate_log_key("test.example/log")
    log = TransparencyLog.open(tmp_path_factory.mktemp("log"), signer_key=skey)
    for d in DATA:
        log.append(d)
    return log


def test_hashes_are_rfc9162() -> None:
    assert leaf_hash(b"") == _sha(b"\x00")
    assert node_hash(b"a" * 32, b"b" * 32) == _sha(b"\x01" + b"a" * 32 + b"b" * 32)
    # The RFC 6962 / 9162 test tree's first leaf is the empty string.
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


def test_inclusion_every_size_1_to_64(log64: TransparencyLog) -> None:
    for size in range(1, 65):
        root = naive_mth(DATA[:size])
        assert log64.root(size) == root
        for index in range(size):
            proof = log64.inclusion_proof(index, size)
            assert proof == naive_path(index, DATA[:size])
            verify_inclusion(index, size, leaf_hash(DATA[index]), proof, root)


def test_consistency_every_pair_up_to_64(log64: TransparencyLog) -> None:
    roots = [naive_mth(DATA[:n]) for n in range(65)]
    for new in range(1, 65):
        for old in range(1, new + 1):
            proof = log64.consistency_proof(old, new)
            assert proof == (naive_proof(old, DATA[:new]) if old < new else [])
            verify_consistency(old, new, roots[old], roots[new], proof)
    verify_consistency(0, 5, roots[0], roots[5], [])


def test_proofs_are_fast(log64: TransparencyLog) -> None:
    import time

    start = time.perf_counter()
    for size in range(1, 65):
        for index in range(size):
            log64.inclusion_proof(index, size)
    assert time.perf_counter() - start < 1.0


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_inclusion_mutations_all_fail(log64: TransparencyLog) -> None:
    for size in (1, 2, 3, 7, 8, 13, 64):
        root = log64.root(size)
        for index in range(size):
            leaf = leaf_hash(DATA[index])
            proof = log64.inclusion_proof(index, size)
            cases: list[tuple[int, int, bytes, list[bytes], bytes]] = [
                (index, size, _flip(leaf), proof, root),
                (index, size, leaf, proof, _flip(root)),
                (index, size, leaf, [*proof, leaf], root),
                # Same shape, claimed size is bound to the root: a bigger tree's root fails.
                (index, size + 1, leaf, proof, log64.root(min(size + 1, 64))),
                (index + 1, size, leaf, proof, root),
            ]
            if proof:
                cases.append((index, size, leaf, proof[:-1], root))
                cases.append((index, size, leaf, [_flip(proof[0]), *proof[1:]], root))
            for i, s, lf, p, r in cases:
                with pytest.raises(VerificationError) as err:
                    verify_inclusion(i, s, lf, p, r)
                assert err.value.check == "tlog-inclusion"


def test_consistency_mutations_all_fail(log64: TransparencyLog) -> None:
    for new in (2, 3, 7, 8, 9, 64):
        for old in range(1, new):
            o, n = log64.root(old), log64.root(new)
            proof = log64.consistency_proof(old, new)
            cases: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
                (old, new, _flip(o), n, proof),
                (old, new, o, _flip(n), proof),
                (old, new, o, n, proof[:-1]),
                (old, new, o, n, [*proof, o]),
                (old, new, o, n, [_flip(proof[0]), *proof[1:]]),
                (new, old, n, o, proof),
                (old, new, o, n, []),
            ]
            for a, b, ra, rb, p in cases:
                with pytest.raises(VerificationError) as err:
                    verify_consistency(a, b, ra, rb, p)
                assert err.value.check == "tlog-consistency"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: root_from_inclusion(0, 1, b"short", []), "leaf hash is 5 bytes"),
        (lambda: verify_inclusion(0, 1, b"x" * 32, [b"y"], b"z" * 32), "element 0"),
        (lambda: verify_consistency(1, 2, b"x", b"y" * 32, []), "old root hash"),
    ],
)
def test_wrong_hash_lengths_are_parse_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        call()


# --- keys and checkpoints ------------------------------------------------------------------------

NAME = "test.example/log"
SEED = bytes(range(32))
PRIV = Ed25519PrivateKey.from_private_bytes(SEED)
PUB = PRIV.public_key().public_bytes_raw()
KHASH = hashlib.sha256(NAME.encode() + b"\n\x01" + PUB).digest()[:4]
B64_PUB = base64.b64encode(b"\x01" + PUB).decode()
B64_ALG2 = base64.b64encode(b"\x02" + PUB).decode()
B64_SHORT = base64.b64encode(b"\x01" + PUB[:31]).decode()
VKEY = f"{NAME}+{KHASH.hex()}+{B64_PUB}"
ROOT = bytes(range(32, 64))


def sign(body: str, name: str = NAME, priv: Ed25519PrivateKey = PRIV, khash: bytes = KHASH) -> str:
    sig = base64.b64encode(khash + priv.sign(body.encode())).decode()
    return f"{body}\n\u2014 {name} {sig}\n"


BODY = f"{NAME}\n7\n{base64.b64encode(ROOT).decode()}\n"
GOOD = sign(BODY)


def test_verifier_key_roundtrip() -> None:
    key = VerifierKey.parse(VKEY)
    assert (key.name, key.key_hash, key.public_key) == (NAME, KHASH, PUB)
    assert key.encode() == VKEY


def test_generated_keys_parse() -> None:
    skey, vkey = generate_log_key("a.example/b")
    assert skey.startswith("PRIVATE+KEY+a.example/b+")
    assert VerifierKey.parse(vkey).name == "a.example/b"


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("nohash", "form name\\+hash\\+key"),
        (f"+{KHASH.hex()}+{B64_PUB}", "not a valid key name"),
        (f"bad name+{KHASH.hex()}+{B64_PUB}", "not a valid key name"),
        (f"{NAME}+{KHASH.hex().upper()}+{B64_PUB}", "8 lower-case hex"),
        (f"{NAME}+{KHASH.hex()[:6]}+{B64_PUB}", "8 lower-case hex"),
        (f"{NAME}+00000000+{B64_PUB}", "does not match its key"),
        (f"other+{KHASH.hex()}+{B64_PUB}", "does not match its key"),
        (f"{NAME}+{KHASH.hex()}+{B64_PUB[:-1]}", "base64"),
        (f"{NAME}+{KHASH.hex()}+{B64_ALG2}", "not an Ed25519"),
        (f"{NAME}+{KHASH.hex()}+{B64_SHORT}", "Ed25519"),
    ],
)
def test_verifier_key_rejects(vkey: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        VerifierKey.parse(vkey)


def test_open_checkpoint_good() -> None:
    cp = open_checkpoint(GOOD, [VerifierKey.parse(VKEY)])
    assert cp == Checkpoint(origin=NAME, size=7, root_hash=ROOT, extensions=(), note=GOOD)


def test_open_checkpoint_extensions_and_foreign_cosignature() -> None:
    body = BODY + "ext line one\n"
    other = Ed25519PrivateKey.generate()
    note = sign(body)
    cosig = base64.b64encode(b"\0\0\0\0" + other.sign(body.encode())).decode()
    note += f"\u2014 witness.example {cosig}\n"
    cp = open_checkpoint(note, [VerifierKey.parse(VKEY)])
    assert cp.extensions == ("ext line one",)


OTHER = Ed25519PrivateKey.generate()
ROOT_B64 = base64.b64encode(ROOT).decode()

PARSE_CASES = [
    ("no trailing newline", GOOD[:-1], "does not end in a newline"),
    ("no blank line", BODY, "no blank line"),
    ("control char", GOOD.replace("7", "7\x01"), "control character"),
    ("ascii dash", GOOD.replace("\u2014", "-"), "em dash"),
    ("three fields", GOOD.replace(f"\u2014 {NAME} ", f"\u2014 {NAME} x "), "'\u2014 name sig"),
    ("sig not base64", GOOD.replace(f"\u2014 {NAME} ", f"\u2014 {NAME} *"), "base64"),
    ("sig too short", f"{BODY}\n\u2014 {NAME} AAAA\n", "too short"),
    ("too many sigs", BODY + "\n" + "\u2014 x AAAAAAA=\n" * 101, "more than 100"),
    ("two lines only", sign(f"{NAME}\n7\n"), "needs origin"),
    ("empty origin", sign(f"\n7\n{ROOT_B64}\n"), "no blank line|origin"),
    ("size leading zero", sign(f"{NAME}\n07\n{ROOT_B64}\n"), "canonical decimal"),
    ("size negative", sign(f"{NAME}\n-7\n{ROOT_B64}\n"), "canonical decimal"),
    ("size huge", sign(f"{NAME}\n{1 << 64}\n{ROOT_B64}\n"), "out of range"),
    ("root short", sign(f"{NAME}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n"), "31 bytes"),
    ("root not b64", sign(f"{NAME}\n7\n{ROOT_B64[:-1]}\n"), "base64"),
    ("empty extension", sign(BODY + "x\n\ny\n"), "empty|origin|em dash"),
    ("lone surrogate", GOOD.replace("7", "7\ud800"), "UTF-8"),
]


@pytest.mark.parametrize(("case", "note", "message"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_open_checkpoint_parse_errors(case: str, note: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        open_checkpoint(note, [VerifierKey.parse(VKEY)])


SHORT_SIG = base64.b64encode(KHASH + b"x" * 10).decode()
VERIFY_CASES = [
    ("bad signature", sign(BODY, priv=OTHER), "does not verify"),
    ("edited body", GOOD.replace("\n7\n", "\n8\n"), "does not verify"),
    ("unknown key only", sign(BODY, name="someone.else"), "no valid signature"),
    ("key hash mismatch", sign(BODY, khash=b"\0\0\0\0"), "no valid signature"),
    ("short sig", f"{BODY}\n\u2014 {NAME} {SHORT_SIG}\n", "len"),
    ("origin is not key name", sign(f"other.origin\n7\n{ROOT_B64}\n"), "origin"),
    ("good then bad", GOOD + sign(BODY, priv=OTHER).split("\n\n")[1], "does not verify"),
]


@pytest.mark.parametrize(
    ("case", "note", "message"), VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES]
)
def test_open_checkpoint_verification_errors(case: str, note: str, message: str) -> None:
    with pytest.raises(VerificationError, match=message) as err:
        open_checkpoint(note, [VerifierKey.parse(VKEY)])
    assert err.value.check == "tlog-checkpoint"


def test_open_checkpoint_requires_pinned_keys() -> None:
    with pytest.raises(VerificationError, match="no log verifier keys"):
        open_checkpoint(GOOD, [])


def test_bundle_entry_verifies(log64: TransparencyLog) -> None:
    keys = [VerifierKey.parse(log64.verifier_key)]
    entry = bundle_entry(log64, DATA[5])
    assert entry["index"] == 5
    assert entry["tree_size"] == 64
    inclusion = entry["inclusion"]
    assert isinstance(inclusion, list)
    checkpoint = entry["checkpoint"]
    assert isinstance(checkpoint, str)
    proof = [bytes.fromhex(h) for h in inclusion]
    cp = verify_log_entry(
        DATA[5], index=5, tree_size=64, inclusion=proof, checkpoint=checkpoint, keys=keys
    )
    assert cp.size == 64
    with pytest.raises(VerificationError, match="tlog-inclusion"):
        verify_log_entry(
            DATA[6], index=5, tree_size=64, inclusion=proof, checkpoint=checkpoint, keys=keys
        )
    with pytest.raises(VerificationError, match="size 63"):
        verify_log_entry(
            DATA[5], index=5, tree_size=63, inclusion=proof, checkpoint=checkpoint, keys=keys
        )
    with pytest.raises(LookupError):
        bundle_entry(log64, b"never appended")


def test_log_checkpoint_opens(log64: TransparencyLog, tmp_path: Path) -> None:
    cp = open_checkpoint(log64.checkpoint(), [VerifierKey.parse(log64.verifier_key)])
    assert (cp.origin, cp.size, cp.root_hash) == ("test.example/log", 64, naive_mth(DATA))


# --- fuzz: only ParseError or VerificationError may escape ---------------------------------------

_note_chars = st.sampled_from(["\n", " ", "\u2014", "+", "A", "=", "7", "/", "x", "\x01", "é"])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.lists(_note_chars, max_size=80).map("".join),
        st.builds(
            lambda cut, junk: GOOD[:cut] + junk + GOOD[cut:],
            st.integers(0, len(GOOD)),
            st.text(max_size=5),
        ),
    )
)
def test_fuzz_open_checkpoint(note: str) -> None:
    with contextlib.suppress(ParseError, VerificationError):
        open_checkpoint(note, [VerifierKey.parse(VKEY)])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda cut, junk: VKEY[:cut] + junk + VKEY[cut:],
            st.integers(0, len(VKEY)),
            st.text(max_size=4),
        ),
    )
)
def test_fuzz_verifier_key_parse(s: str) -> None:
    try:
        key = VerifierKey.parse(s)
    except ParseError:
        return
    assert VerifierKey.parse(key.encode()) == key
