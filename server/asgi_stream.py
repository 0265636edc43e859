"""Streaming an ASGI response that stops when the client goes away (gateway and relay)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

from starlette.types import Receive, Send

__all__ = ["stream_to_client"]

Message = MutableMapping[str, Any]


async def stream_to_client(
    receive: Receive, send: Send, messages: AsyncGenerator[Message, None]
) -> bool:
    """Send every message ``messages`` yields; True when the last one went out.

    A watcher task waits for ``http.disconnect``: a client that goes away before the response
    ended cancels the sending, ``messages`` is closed (so whatever feeds it, an engine stream or
    an upstream connection, is released at once) and the result is False. One task per response,
    none per message.
    """
    me = asyncio.current_task()
    assert me is not None
    gone = False
    finishing = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        if not finishing:
            gone = True
            me.cancel()

    watcher = asyncio.create_task(watch())
    try:
        async for message in messages:
            if not message.get("more_body", False) and message["type"] == "http.response.body":
                finishing = True
            await send(message)
        return True
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()
        return False
    finally:
        watcher.cancel()
        await messages.aclose()
