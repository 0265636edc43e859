"""Make docs/dashboard.png from the real dashboard watching a running simulated appliance.

Run from the repository root: ``.venv/bin/python -m tests.tui.make_screenshot`` (needs
``rsvg-convert``: ``apt-get install librsvg2-bin``). It provisions a private simulated appliance
with the fake engine, sends encrypted prompts through a verified session while the dashboard
watches, exports the screen as SVG and converts it to PNG.
"""

from __future__ import annotations

import asyncio
import html
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from client_cli.session import Session
from client_cli.trust import TrustStore, load_policy
from tests.conftest import REPO_ROOT, start_appliance, stop_appliance
from tui.app import DashboardApp

SIZE = (120, 36)
WATCH_S = 40.0
_TEXT = re.compile(
    r'(<text [^>]*?x=")([\d.]+)("[^>]*?textLength=")([\d.]+)("[^>]*>)([^<]*)(</text>)'
)


def rsvg_friendly(svg: str) -> str:
    """rsvg drops the leading spaces of a text run; move them into the run's x instead."""

    def fix(m: re.Match[str]) -> str:
        text = m.group(6)
        chars = html.unescape(text)
        lead = len(chars) - len(chars.lstrip("\xa0"))
        if not lead or lead == len(chars):
            return m.group(0)
        cell = float(m.group(4)) / len(chars)
        x = float(m.group(2)) + lead * cell
        length = float(m.group(4)) - lead * cell
        rest = html.escape(chars[lead:], quote=False).replace("\xa0", "&#160;")
        return f"{m.group(1)}{x:.1f}{m.group(3)}{length:.1f}{m.group(5)}{rest}{m.group(7)}"

    return _TEXT.sub(fix, svg)


async def load(session: Session, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        payload = {
            "model": "openpcc-model",
            "messages": [{"role": "user", "content": f"tell me about confidential computing {i}"}],
            "max_tokens": 24 + (i % 5) * 16,
        }
        if i % 2:  # the gateway counts prompt tokens from non-streamed answers' usage
            await session.request_json("POST", "/v1/chat/completions", payload)
        else:
            async for _ in session.stream(
                "POST", "/v1/chat/completions", {**payload, "stream": True}
            ):
                pass
        await asyncio.sleep(0.2 * (i % 4))


async def shoot(url: str, config: Path, out_svg: Path) -> None:
    store = TrustStore(config)
    app = DashboardApp(url, store=store, poll_interval=1.0)
    stop = asyncio.Event()
    async with (
        Session(url, trust=store.anchors(), policy=load_policy(store.policy_path)) as session,
        app.run_test(size=SIZE) as pilot,
    ):
        workers = [asyncio.create_task(load(session, stop)) for _ in range(3)]
        await pilot.pause(WATCH_S)
        stop.set()
        await asyncio.gather(*workers)
        await pilot.pause(1.5)
        out_svg.write_text(app.export_screenshot(title="openpcc-appliance dashboard"))


def main() -> None:
    out = REPO_ROOT / "docs" / "dashboard.png"
    with tempfile.TemporaryDirectory() as tmp:
        node = start_appliance(Path(tmp), fake_args=("--tokens-per-second", "80"))
        try:
            svg = Path(tmp) / "dashboard.svg"
            asyncio.run(shoot(node.url, node.config, svg))
            svg.write_text(rsvg_friendly(svg.read_text()))
            out.parent.mkdir(exist_ok=True)
            subprocess.run(["rsvg-convert", "-z", "1.25", str(svg), "-o", str(out)], check=True)
        finally:
            stop_appliance(node)
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
