"""An independent OHTTP client, written here from the RFCs with pyhpke and cryptography only.

None of server.ohttp is used: key configs, Binary HTTP, request encapsulation, response
decryption and chunked framing are all done by hand, so the gateway is checked against the
specifications rather than against its own module.
"""

from __future__ import annotations

import json
import struct

import httpx
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId


def _varint(n: int) -> bytes:
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return struct.pack(">H", n | 0x4000)
    return struct.pack(">I", n | 0x8000_0000)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    size = 1 << (b[i] >> 6)
    return int.from_bytes(b[i : i + size], "big") & ((1 << (8 * size - 2)) - 1), i + size


def _vstr(s: bytes) -> bytes:
    return _varint(len(s)) + s


def _bhttp_request(path: str, body: bytes) -> bytes:
    """RFC 9292 known-length request (framing indicator 0)."""
    fields = _vstr(b"content-type") + _vstr(b"application/json")
    return (
        _varint(0)
        + _vstr(b"POST")
        + _vstr(b"https")
        + _vstr(b"gateway.example")
        + _vstr(path.encode())
        + _vstr(fields)
        + _vstr(body)
        + _varint(0)
    )


def _key_config(url: str) -> tuple[int, bytes]:
    """First configuration of application/ohttp-keys: (key id, X25519 public key)."""
    raw = httpx.get(url + "/v1/ohttp-keys", timeout=5).content
    (length,) = struct.unpack(">H", raw[:2])
    cfg = raw[2 : 2 + length]
    key_id, kem = cfg[0], struct.unpack(">H", cfg[1:3])[0]
    assert kem == 0x0020
    pk = cfg[3:35]
    (suites_len,) = struct.unpack(">H", cfg[35:37])
    suites = [struct.unpack(">HH", cfg[37 + i : 41 + i]) for i in range(0, suites_len, 4)]
    assert (0x0001, 0x0001) in suites  # HKDF-SHA256, AES-128-GCM
    return key_id, pk


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        h = hmac.HMAC(prk, hashes.SHA256())
        h.update(t + info + bytes([i]))
        t = h.finalize()
        out += t
        i += 1
    return out[:length]


def _seal(url: str, label: bytes, key_id: int, pk: bytes):  # type: ignore[no-untyped-def]
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
    hdr = bytes([key_id]) + struct.pack(">HHH", 0x0020, 0x0001, 0x0001)
    enc, ctx = suite.create_sender_context(
        suite.kem.deserialize_public_key(pk), info=label + b"\x00" + hdr
    )
    return hdr, enc, ctx


def _response_keys(ctx, label: bytes, enc: bytes, nonce: bytes) -> tuple[AESGCM, bytes]:  # type: ignore[no-untyped-def]
    secret = ctx.export(label, 16)  # max(Nn, Nk) for AES-128-GCM
    prk = _hkdf_extract(enc + nonce, secret)
    return AESGCM(_hkdf_expand(prk, b"key", 16)), _hkdf_expand(prk, b"nonce", 12)


def _decode_known_length_response(b: bytes) -> tuple[int, bytes]:
    framing, i = _read_varint(b, 0)
    assert framing == 1
    status, i = _read_varint(b, i)
    flen, i = _read_varint(b, i)
    i += flen
    clen, i = _read_varint(b, i)
    return status, b[i : i + clen]


def test_independent_client_one_shot(appliance) -> None:  # type: ignore[no-untyped-def]
    key_id, pk = _key_config(appliance.url)
    payload = {"messages": [{"role": "user", "content": "interop works"}], "max_tokens": 3}
    hdr, enc, ctx = _seal(appliance.url, b"message/bhttp request", key_id, pk)
    ct = ctx.seal(_bhttp_request("/v1/chat/completions", json.dumps(payload).encode()))
    r = httpx.post(
        appliance.url + "/v1/ohttp",
        content=hdr + enc + ct,
        headers={"content-type": "message/ohttp-req"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "message/ohttp-res"
    nonce, sealed = r.content[:16], r.content[16:]
    aead, aead_nonce = _response_keys(ctx, b"message/bhttp response", enc, nonce)
    status, body = _decode_known_length_response(aead.decrypt(aead_nonce, sealed, b""))
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "echo: works interop"


def test_independent_client_chunked_streaming(appliance) -> None:  # type: ignore[no-untyped-def]
    key_id, pk = _key_config(appliance.url)
    payload = {"prompt": "streamed interop", "max_tokens": 3, "stream": True}
    hdr, enc, ctx = _seal(appliance.url, b"message/bhttp chunked request", key_id, pk)
    inner = _bhttp_request("/v1/completions", json.dumps(payload).encode())
    # One non-final chunk, then an empty final chunk sealed with AAD "final".
    c1 = ctx.seal(inner)
    final = ctx.seal(b"", aad=b"final")
    body = hdr + enc + _varint(len(c1)) + c1 + _varint(0) + final
    r = httpx.post(
        appliance.url + "/v1/ohttp",
        content=body,
        headers={"content-type": "message/ohttp-chunked-req"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "message/ohttp-chunked-res"
    data = r.content
    nonce = data[:16]
    aead, base = _response_keys(ctx, b"message/bhttp chunked response", enc, nonce)
    i, counter, plain, finished = 16, 0, b"", False
    while i < len(data):
        length, i = _read_varint(data, i)
        chunk_nonce = (int.from_bytes(base, "big") ^ counter).to_bytes(12, "big")
        if length == 0:  # the final chunk runs to the end of the stream
            plain += aead.decrypt(chunk_nonce, data[i:], b"final")
            finished = True
            break
        plain += aead.decrypt(chunk_nonce, data[i : i + length], b"")
        i += length
        counter += 1
    assert finished, "the response ended without a final chunk"
    # Indeterminate-length Binary HTTP response (framing 3) carrying server-sent events.
    framing, j = _read_varint(plain, 0)
    assert framing == 3
    status, j = _read_varint(plain, j)
    assert status == 200
    while True:  # header fields up to the zero terminator
        n, j = _read_varint(plain, j)
        if n == 0:
            break
        j += n
        v, j = _read_varint(plain, j)
        j += v
    content = b""
    while True:
        n, j = _read_varint(plain, j)
        if n == 0:
            break
        content += plain[j : j + n]
        j += n
    text = "".join(
        json.loads(line[6:])["choices"][0]["text"]
        for line in content.decode().splitlines()
        if line.startswith("data: {")
    )
    assert text.strip() == "echo: interop streamed"
