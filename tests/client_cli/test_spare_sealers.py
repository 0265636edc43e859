"""Sender contexts made ahead of time: each used once, only for the key it was made for."""

from __future__ import annotations

import asyncio

from client_cli.session import SpareSealers
from server.ohttp import ChunkedRequestOpener, KeyConfig
from server.ohttp._keys import ServerKey


def _server_key(key_id: int) -> ServerKey:
    return ServerKey.generate(key_id)


def _config(key: ServerKey) -> KeyConfig:
    return key.config


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_spare_is_made_at_the_next_turn_and_handed_out_once() -> None:
    key = _server_key(1)
    config = _config(key)

    async def go() -> None:
        spares = SpareSealers(limit=4)
        assert len(spares) == 0
        spares.refill_soon(config)
        assert len(spares) == 0  # not on the caller's time
        await _settle()
        assert len(spares) == 1
        a = spares.take(config)
        assert len(spares) == 0
        b = spares.take(config)  # none left: a fresh one
        assert a.header() != b.header()  # distinct ephemeral keys, never a reuse
        # Each opens at the gateway like any other request.
        for sealer in (a, b):
            opener = ChunkedRequestOpener({1: key})
            out = opener.feed(sealer.header() + sealer.seal_chunk(b"hello", final=True))
            assert b"".join(out + opener.close()) == b"hello"

    asyncio.run(go())


def test_spares_for_another_key_are_never_used_and_the_pool_is_bounded() -> None:
    old, new = _config(_server_key(1)), _config(_server_key(2))

    async def go() -> None:
        spares = SpareSealers(limit=3)
        for _ in range(10):
            spares.refill_soon(old)
        await _settle()
        assert len(spares) == 3
        sealer = spares.take(new)  # a different configuration: a fresh sealer for it
        assert sealer.header()[0] == 2
        assert len(spares) == 3
        spares.refill_soon(new)  # the key changed: the old spares are dropped
        assert len(spares) == 0
        await _settle()
        assert len(spares) == 1
        assert spares.take(new).header()[0] == 2
        assert spares.take(old).header()[0] == 1

    asyncio.run(go())
