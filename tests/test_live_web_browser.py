"""The live view in a real headless browser (issue 15).

Debian's Chromium, driven by Selenium through Debian's chromedriver (``.ci/run``
installs both when missing). The browser is started here, as this process's child that
dies with it, and Selenium attaches to it. The page is fed by ``live_feed``: a fixture
that starts a source of real ``live.events`` and returns the page's URL; today a
producer thread in this process (``tests/live_feed.py``), tomorrow ``cli.py watch
--serve 127.0.0.1:0`` over a generated stream (the test only needs the URL, the time the
alert was published and where the snapshots lie).

The test checks what an operator sees: the source's tile with a frame, a timeline that
moves, the alert in the list within a few seconds of being published (with its
snapshot), the alert's own timeline chart, and that the page loaded nothing from another
origin. It saves a screenshot to ``reports/live/web_view.png``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from cache_schema import die_with_parent, write_bytes
from live.events import EventHub
from live.web import WebConfig, WebView
from tests.live_feed import FeedProducer, FeedScenario

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "reports" / "live" / "web_view.png"
ALERT_SHOWN_WITHIN_S = 3.0
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-breakpad", "--disable-extensions", "--mute-audio",
                  "--window-size=1280,1000", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


def _find_browser() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium here (looked for chromium and chromedriver on PATH): `.ci/run` installs them with "
                    "`apt-get install chromium chromium-driver`, which was not possible on this machine")
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A fresh headless Chromium (its own profile), started as our child and attached to
    by chromedriver; both die with this process."""
    chromium, chromedriver = _find_browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="avar-chromium-"))
    dies_with_us = functools.partial(die_with_parent, os.getpid())
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=dies_with_us)
    driver = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit status {proc.poll()})")
            time.sleep(0.05)
        options = webdriver.ChromeOptions()
        options.debugger_address = f"127.0.0.1:{int(port_file.read_text().split()[0])}"
        driver = webdriver.Chrome(service=Service(chromedriver, popen_kw={"preexec_fn": dies_with_us}), options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Feed:
    """What the browser test needs from a running feed."""

    url: str
    producer: FeedProducer


@pytest.fixture
def live_feed(tmp_path: Path) -> Iterator[Callable[[], Feed]]:
    """Starts the feed when called (after the browser is up, so that the alert is
    published while the page is open); stops it at teardown."""
    running: list[tuple[EventHub, FeedProducer]] = []

    def start() -> Feed:
        scenario = FeedScenario()
        view = WebView(WebConfig(port=0, threshold=0.5, timeline_s=60.0), sources=scenario.sources)
        url = view.start()
        hub = EventHub([view])
        producer = FeedProducer(hub, tmp_path, scenario)
        running.append((hub, producer))
        producer.start()
        return Feed(url, producer)

    yield start
    for hub, producer in running:
        producer.stop()
        producer.join(10)
        hub.close()


def _wait(what: str, check: Callable[[], object], timeout: float, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def test_page_shows_tiles_moving_timeline_and_the_alert(browser, live_feed) -> None:
    from selenium.webdriver.common.by import By

    feed = live_feed()
    sources = feed.producer.scenario.sources
    browser.get(feed.url)
    tiles = _wait("a tile per source", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".tile")) == len(sources) and
                  browser.find_elements(By.CSS_SELECTOR, ".tile"), 5)
    assert [t.get_attribute("data-source") for t in tiles] == list(sources)  # names as given, URLs and all
    first = tiles[0]

    def last_t() -> float:
        value = first.find_element(By.CSS_SELECTOR, ".chart").get_attribute("data-last-t")
        return float(value) if value else -1.0

    t1 = _wait("the first source's timeline to have points", lambda: last_t() > 0 and last_t(), 5)
    _wait("the timeline to move", lambda: last_t() > t1, 3)
    _wait("a frame in the tile", lambda: first.get_attribute("data-frame-t"), 5)
    assert first.find_element(By.CSS_SELECTOR, ".frame img").get_attribute("naturalWidth") == "320"

    # The alert: in the list within a few seconds of being published, with its class.
    assert feed.producer.alert_started.wait(10), "the feed published no alert"
    _wait("the alert in the list", lambda: browser.find_elements(By.CSS_SELECTOR, "#alerts li.alert"), 5, every=0.02)
    shown_after = time.time() - feed.producer.alert_started_at
    assert shown_after < ALERT_SHOWN_WITHIN_S, f"the alert appeared {shown_after:.2f} s after it was published"
    print(f"the alert appeared in the page {shown_after:.3f} s after it was published")
    item = browser.find_element(By.CSS_SELECTOR, "#alerts li.alert")
    assert item.find_element(By.CSS_SELECTOR, ".label").text == feed.producer.scenario.label
    assert item.find_element(By.CSS_SELECTOR, ".source").text == sources[0]

    # It closes; its snapshot loads; the second source shows that it stalled.
    assert feed.producer.alert_ended.wait(10)
    _wait("the alert to close", lambda: item.get_attribute("data-open") == "false", 3)
    _wait("the alert's snapshot", lambda: browser.execute_script(
        "const i = document.querySelector('#alerts li.alert .snapshot'); return i && !i.hidden && i.naturalWidth;"), 5)
    _wait("the second source's stalled state",
          lambda: tiles[1].find_element(By.CSS_SELECTOR, ".state").text == "stalled", 5)
    assert "end 4.5 s" in item.find_element(By.CSS_SELECTOR, ".times").text
    assert not item.find_element(By.CSS_SELECTOR, ".open").is_displayed()

    # The link shows the score timeline around the alert.
    item.find_element(By.CSS_SELECTOR, ".timeline-link").click()
    points = _wait("the alert's timeline chart", lambda: int(browser.find_element(
        By.CSS_SELECTOR, "#alert-chart").get_attribute("data-points") or 0), 3)
    assert points >= 6
    assert browser.find_elements(By.CSS_SELECTOR, "#alert-chart canvas")

    # Nothing came from anywhere but the server itself.
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);")
    assert set(origins) <= {feed.url.rstrip("/")}, origins
    height = browser.execute_script("return document.documentElement.scrollHeight")  # the whole page, not a window
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": min(height, 2400), "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.3)  # the charts follow the new size on the resize event
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(SCREENSHOT, browser.get_screenshot_as_png())
    assert SCREENSHOT.stat().st_size > 10_000


def test_page_works_with_a_token(browser) -> None:
    """The page opened as ``/?token=T``: its own scripts, styles, the event stream and
    the frames all pass the token check, and the token leaves the address bar."""
    from selenium.webdriver.common.by import By

    from live.events import FrameEvent, ScoreRecord
    from tests.live_feed import frame_jpeg

    view = WebView(WebConfig(port=0, token="s3cret-t0ken", threshold=0.5))
    url = view.start()
    try:
        browser.get(url)
        assert "401" in browser.find_element(By.TAG_NAME, "body").text  # no token, no page
        browser.get(url + "?token=s3cret-t0ken")
        _wait("the page's script to run", lambda: browser.find_element(By.ID, "connection").text == "live", 5)
        now = time.time()
        for i in range(1, 9):
            view.handle(ScoreRecord("cam", i * 0.25, i * 0.25 - 0.25, now, 0.01, "normal", 0.1, {"normal": 0.9}))
        view.handle(FrameEvent("cam", 2.0, now, frame_jpeg(2.0, "cam")))
        tile = _wait("the tile", lambda: browser.find_elements(By.CSS_SELECTOR, ".tile"), 5)[0]
        _wait("its timeline", lambda: tile.find_element(By.CSS_SELECTOR, ".chart").get_attribute("data-last-t") == "2", 5)
        _wait("its frame", lambda: tile.get_attribute("data-frame-t") == "2", 5)
        assert "token" not in browser.current_url
    finally:
        view.close()
