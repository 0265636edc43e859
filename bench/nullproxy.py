"""A do-nothing TCP forwarder: the floor for *any* extra process between client and engine.

The bench's ``proxy`` configuration sends the engine-direct workload through this forwarder:
every byte is passed on unread (no HTTP parsing, no cryptography), one ``write`` per ``read``, on
uvloop when it is installed. On a machine whose cores are all busy with the engine and the load
generator, what this costs is the price of one more process and one more loopback hop, which the
gateway pays too before it does any work of its own. Comparing the gateway with it separates the
two: ``gateway / proxy`` is the share of OpenPCC's own work, ``proxy / direct`` the hop's.

Run as ``python -m bench.nullproxy LISTEN_PORT TARGET_PORT`` (both on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["main", "serve"]


class _Side(asyncio.Protocol):
    """One end of a forwarded connection; bytes that arrive before the peer exists wait."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._early: list[bytes] = []
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def link(self, peer: _Side) -> None:
        self.peer = peer
        assert peer.transport is not None
        for data in self._early:
            peer.transport.write(data)
        self._early.clear()


_CONNECTING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


class _Downstream(_Side):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self._target_port = target_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        _CONNECTING.add(task)
        task.add_done_callback(_CONNECTING.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Side, "127.0.0.1", self._target_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self._closed:
            up.transport.close()  # type: ignore[union-attr]
            return
        up.link(self)
        self.link(up)


async def serve(listen_port: int, target_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Downstream(target_port), "127.0.0.1", listen_port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        raise SystemExit("usage: python -m bench.nullproxy LISTEN_PORT TARGET_PORT")
    listen, target = int(args[0]), int(args[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(listen, target))
    else:
        uvloop.run(serve(listen, target))


if __name__ == "__main__":
    main()
