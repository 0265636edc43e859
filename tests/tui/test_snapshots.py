"""SVG snapshots of the main screen, from fixed state: no clock, port or pid of the run."""

from __future__ import annotations

import pytest

from tests.tui.states import assert_svg_snapshot, fixed_app, make_state

pytestmark = pytest.mark.anyio

CASES = [
    # name, simulated, failed check, size
    ("verified_80x24", False, None, (80, 24)),
    ("simulated_80x24", True, None, (80, 24)),
    ("failed_measurement_80x24", False, "measurement", (80, 24)),
    ("simulated_140x40", True, None, (140, 40)),
]


@pytest.mark.parametrize(("name", "simulated", "failed", "size"), CASES, ids=[c[0] for c in CASES])
async def test_main_screen(
    name: str, simulated: bool, failed: str | None, size: tuple[int, int]
) -> None:
    app = fixed_app(make_state(simulated=simulated, failed=failed))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.pause()
        svg = app.export_screenshot(title="OpenPCC dashboard")
    assert_svg_snapshot(svg, name)


async def test_snapshot_is_deterministic() -> None:
    svgs = []
    for _ in range(2):
        app = fixed_app(make_state(simulated=True))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            svgs.append(app.export_screenshot(title="OpenPCC dashboard"))
    assert svgs[0] == svgs[1]
