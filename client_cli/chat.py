"""``openpcc chat``: an interactive loop over one verified session.

History lives in memory only (``--save`` writes it on exit). Ctrl-C while an answer streams stops
that answer; at the prompt it reminds how to leave. A line ending in a backslash continues the
message on the next line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from attest.errors import OpenPCCError
from client_cli.render import print_run, status_line
from client_cli.session import (
    Session,
)
from client_cli.trust import replace_durably

__all__ = ["ChatLoop"]

HELP = "/verify  show the last verification · /reset  forget the conversation · /quit  leave"


class ChatLoop:
    def __init__(self, session: Session, url: str, *, max_tokens: int, save: Path | None) -> None:
        self.session = session
        self.url = url
        self.max_tokens = max_tokens
        self.save = save
        self.history: list[dict[str, str]] = []
        self.console = Console(highlight=False)
        self.loop = asyncio.new_event_loop()

    def run(self) -> int:
        try:
            self.loop.run_until_complete(self.session.node())
            self.console.print(status_line(self.session.last_run, self.url))
            self.console.print(f"[dim]{HELP}[/]")
            while True:
                try:
                    text = self._read()
                except KeyboardInterrupt:
                    self.console.print("\n[dim](type /quit to leave)[/]")
                    continue
                except EOFError:
                    break
                if text is None:
                    continue
                cmd = text.strip()
                if cmd == "/quit":
                    break
                if cmd == "/reset":
                    self.history.clear()
                    self.console.print("[dim]conversation forgotten[/]")
                    continue
                if cmd == "/verify":
                    if self.session.last_run is not None:
                        print_run(self.console, self.session.last_run, self.url)
                    continue
                if cmd.startswith("/"):
                    self.console.print(f"[dim]unknown command. {HELP}[/]")
                    continue
                self._answer(text)
            return 0
        finally:
            self.loop.run_until_complete(self.session.aclose())
            self.loop.close()
            if self.save is not None and self.history:
                self._save(self.save)

    def _save(self, path: Path) -> None:
        """The transcript, owner-only (it holds prompts and answers), whole or not at all; a
        failure is one line, never a traceback that loses the conversation's end."""
        try:
            replace_durably(path, json.dumps(self.history, indent=1, ensure_ascii=False))
        except OSError as e:
            self.console.print(
                f"[bold red]error:[/] cannot save the transcript to {escape(str(path))}: "
                f"{escape(e.strerror or str(e))}",
                soft_wrap=True,
            )
            return
        self.console.print(f"[dim]transcript saved to {escape(str(path))} (owner-only)[/]")

    def _read(self) -> str | None:
        lines = [input("you> ")]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input("...> "))
        text = "\n".join(lines)
        return text if text.strip() else None

    def _answer(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        task = self.loop.create_task(self._stream(parts))
        self.console.print("[bold cyan]model>[/] ", end="")
        # Ctrl-C cancels the answer at its next await, so the encrypted stream is closed
        # cleanly; a KeyboardInterrupt could land anywhere, even inside the TLS/HPKE state.
        self.loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            self.loop.run_until_complete(task)
        except (asyncio.CancelledError, KeyboardInterrupt):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                self.loop.run_until_complete(task)
            self.console.print("\n[dim](answer stopped)[/]")
        except OpenPCCError as e:
            self.console.print(f"\n[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            if e.hint:
                self.console.print(f"[dim]hint: {escape(e.hint)}[/]", soft_wrap=True)
        else:
            self.console.print()
        finally:
            self.loop.remove_signal_handler(signal.SIGINT)
        if parts:
            self.history.append({"role": "assistant", "content": "".join(parts)})
        else:
            self.history.pop()  # nothing answered: don't keep a dangling question
        self.console.print(status_line(self.session.last_run, self.url))

    async def _stream(self, parts: list[str]) -> None:
        payload = {"messages": self.history, "max_tokens": self.max_tokens, "stream": True}
        async for piece in self.session.stream_text("/v1/chat/completions", payload):
            parts.append(piece)
            self.console.print(piece, end="", markup=False)
