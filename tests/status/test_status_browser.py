"""The status page in a real headless Chromium: log in through the form, read what is shown, and check
screenshots at desktop and phone widths (chart colours where the charts are, no sideways scrolling).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.status import png
from tests.status.browser import Browser, Tab
from tests.status.scenario import HOSTILE, MAIN, OTHER, STAFF, Scenario
from xqueue_server.status_page import ERROR_COLOUR, FAILED_COLOUR, GRADED_COLOUR

pytestmark = pytest.mark.browser

HEADER_COLOUR = "#243447"
LOADED = "document.readyState === 'complete' && document.getElementById('generated') !== null"
SECTIONS_JS = """JSON.stringify([...document.querySelectorAll('section.queue')].map(s => {
  const r = s.getBoundingClientRect();
  const value = f => s.querySelector('[id$="-' + f + '"]').textContent;
  return {name: s.dataset.queue, heading: s.querySelector('h2').textContent, left: r.left, top: r.top + scrollY,
          right: r.right, waiting: value('waiting'), inFlight: value('in-flight'), graded: value('graded'),
          failed: value('failed'), dead: value('dead')};
}))"""


async def log_in(browser: Browser, scenario: Scenario, width: int, height: int, mobile: bool,
                 account: tuple[str, str] = STAFF) -> Tab:
    """A fresh private tab that opens /status/, is sent to the form and logs in by typing and clicking."""
    tab = await browser.new_tab()
    await tab.set_viewport(width, height, mobile)
    await tab.navigate(f"{scenario.server.url}/status/")
    await tab.wait_for("location.pathname === '/status/login/' && document.readyState === 'complete' "
                       "&& document.getElementById('login') !== null")
    username, password = account
    await tab.evaluate(f"""(() => {{
        document.querySelector('input[name=username]').value = {json.dumps(username)};
        document.querySelector('input[name=password]').value = {json.dumps(password)};
        document.querySelector('#login button[type=submit]').click();
        return true; }})()""")
    await tab.wait_for(f"location.pathname === '/status/' && {LOADED}")
    return tab


async def sections(tab: Tab) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in json.loads(await tab.evaluate(SECTIONS_JS))}


async def box(tab: Tab, queue: str, part: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of an element of a queue's card in page coordinates (what a full-page
    screenshot shows), shrunk by a pixel against antialiased edges."""
    rect = json.loads(await tab.evaluate(
        f"(() => {{ const s = [...document.querySelectorAll('section.queue')]"
        f".find(s => s.dataset.queue === {json.dumps(queue)});"
        f" const r = s.querySelector({json.dumps(part)}).getBoundingClientRect();"
        " return JSON.stringify([r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]); })()"))
    left, top, right, bottom = rect
    return int(left) + 1, int(top) + 1, int(right) - 1, int(bottom) - 1


async def chart_colours(tab: Tab, image: png.Image, queue: str) -> dict[str, int]:
    """Pixels of each series colour inside the queue's two charts, as the screenshot shows them."""
    throughput = list(image.region(*await box(tab, queue, "figure.throughput svg")))
    failures = list(image.region(*await box(tab, queue, "figure.failures svg")))
    assert throughput and failures, "the charts are outside the screenshot"
    return {
        "graded": png.count_near(iter(throughput), png.hex_rgb(GRADED_COLOUR)),
        "errors": png.count_near(iter(throughput), png.hex_rgb(ERROR_COLOUR)),
        "failed": png.count_near(iter(failures), png.hex_rgb(FAILED_COLOUR)),
        "failed_in_throughput": png.count_near(iter(throughput), png.hex_rgb(FAILED_COLOUR)),
    }


def assert_not_blank(image: png.Image) -> None:
    header = png.count_near(image.region(0, 0, image.width, 30), png.hex_rgb(HEADER_COLOUR), tolerance=6)
    assert header > image.width * 20, f"the page header is missing from the screenshot ({header} pixels)"
    sample = {image.rgb(x, y) for y in range(0, image.height, 7) for x in range(0, image.width, 7)}
    assert len(sample) > 50, f"the screenshot is nearly uniform ({len(sample)} colours)"


async def test_staff_logs_in_and_reads_its_queues_on_a_desktop(browser: Browser, scenario: Scenario) -> None:
    tab = await log_in(browser, scenario, 1280, 900, mobile=False)
    try:
        shown = await sections(tab)
        assert set(shown) == {MAIN, HOSTILE}
        main = shown[MAIN]
        assert (main["waiting"], main["inFlight"], main["graded"], main["failed"], main["dead"]) == (
            "2", "1", "3", "2", "1")
        text = await tab.evaluate("document.body.innerText")
        assert OTHER not in text and "Callback outbox" not in text
        assert "127.0.0.1" in text and "LMS returned status_code=500" in text
        # The hostile name is text: no element, no script ran (the title would have changed).
        assert shown[HOSTILE]["heading"] == HOSTILE
        assert await tab.evaluate("document.getElementById('pwned') === null && document.title === 'XQueue status'")
        # Wide screen: the queue cards sit side by side.
        assert shown[MAIN]["top"] == shown[HOSTILE]["top"] and shown[MAIN]["left"] != shown[HOSTILE]["left"]

        image = png.decode(await tab.screenshot())
        assert image.width == 1280
        assert_not_blank(image)
        colours = await chart_colours(tab, image, MAIN)
        # Graded (green) under errors (amber) in the throughput chart, failures (red) in their own chart.
        assert colours["graded"] > 100 and colours["errors"] > 30 and colours["failed"] > 100, colours
        assert colours["failed_in_throughput"] == 0, colours
        empty = await chart_colours(tab, image, HOSTILE)
        assert empty["graded"] == empty["errors"] == empty["failed"] == 0, empty
    finally:
        await tab.close()


async def test_the_page_fits_a_phone(browser: Browser, scenario: Scenario) -> None:
    tab = await log_in(browser, scenario, 375, 740, mobile=True)
    try:
        assert await tab.evaluate("document.documentElement.scrollWidth") <= 375
        assert await tab.evaluate("document.body.scrollWidth") <= 375
        overflowing = await tab.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 375.5)"
            ".map(e => e.tagName + '.' + e.className).slice(0, 5)")
        assert overflowing == [], overflowing
        shown = await sections(tab)
        assert set(shown) == {MAIN, HOSTILE}
        # Narrow screen: the cards are stacked, one per row, inside the screen.
        first, second = sorted(shown.values(), key=lambda s: s["top"])
        assert first["left"] == second["left"] and second["top"] > first["top"]
        assert all(s["right"] <= 375 for s in shown.values())
        assert shown[MAIN]["waiting"] == "2" and shown[MAIN]["failed"] == "2"

        image = png.decode(await tab.screenshot())
        assert image.width == 375 and image.height > 740  # the whole page, longer than one screen
        assert_not_blank(image)
        colours = await chart_colours(tab, image, MAIN)
        assert colours["graded"] > 50 and colours["errors"] > 15 and colours["failed"] > 50, colours
    finally:
        await tab.close()


async def test_admin_sees_every_queue_and_the_outbox(browser: Browser, scenario: Scenario) -> None:
    server = scenario.server
    tab = await log_in(browser, scenario, 1024, 800, mobile=False,
                       account=(server.admin.username, server.admin.password))
    try:
        shown = await sections(tab)
        assert {MAIN, OTHER, HOSTILE} <= set(shown)
        assert shown[OTHER]["waiting"] == "3"
        assert await tab.evaluate("document.getElementById('outbox-dead').textContent") == "1"
    finally:
        await tab.close()


async def test_the_page_refreshes_itself(browser: Browser, scenario: Scenario) -> None:
    tab = await log_in(browser, scenario, 800, 600, mobile=False)
    try:
        await tab.navigate(f"{scenario.server.url}/status/?refresh=5")
        await tab.wait_for(f"location.search === '?refresh=5' && {LOADED}")
        before = await tab.evaluate("window.marker = 'old page'; document.getElementById('generated').dateTime")
        # No script of ours runs; the browser reloads on its own because of the meta refresh.
        await tab.wait_for(f"window.marker === undefined && {LOADED}", seconds=15)
        after = await tab.evaluate("document.getElementById('generated').dateTime")
        assert after > before
        assert (await sections(tab))[MAIN]["waiting"] == "2"
    finally:
        await tab.close()


async def test_logging_out_ends_the_session(browser: Browser, scenario: Scenario) -> None:
    tab = await log_in(browser, scenario, 800, 600, mobile=False)
    try:
        await tab.evaluate("document.querySelector('header form button').click(); true")
        await tab.wait_for("location.pathname === '/status/login/' && document.getElementById('login') !== null")
        await tab.navigate(f"{scenario.server.url}/status/")
        await tab.wait_for("location.pathname === '/status/login/' && document.getElementById('login') !== null")
        assert MAIN not in await tab.evaluate("document.body.innerText")
    finally:
        await tab.close()
