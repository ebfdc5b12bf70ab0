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
origin. It saves a screenshot to ``reports/live/web_view.png``: the alert with its clip
player and its heard/seen badge. A real watch of a fused run gives the docs' picture
(``reports/live/web_view_real.png``; docs/live_view.png is a copy).
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
        scenario = FeedScenario(clip=True)
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


def _loaded_clip_player(browser, scope) -> object:
    """The displayed clip player under ``scope`` (an element, or the page), its clip
    loaded: its duration is known and over 2 s, else the player's MediaError is named."""
    from selenium.webdriver.common.by import By

    player = _wait("the clip's player", lambda: [v for v in scope.find_elements(By.CSS_SELECTOR, "video.clip")
                                                 if v.is_displayed()], 5)[0]
    browser.execute_script("arguments[0].preload = 'auto'; arguments[0].load();", player)
    duration = _wait("the clip to load in the player", lambda: browser.execute_script(
        "const v = arguments[0]; return v.error ? -v.error.code : (v.readyState >= 1 ? v.duration : 0);", player), 10)
    assert duration > 2.0, f"the player could not load the clip (MediaError code {-duration})"
    return player


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
    assert first.find_element(By.CSS_SELECTOR, ".evidence").text.startswith("audio 0.")   # fused runs' evidence

    # The alert: in the list within a few seconds of being published, with its class.
    assert feed.producer.alert_started.wait(10), "the feed published no alert"
    _wait("the alert in the list", lambda: browser.find_elements(By.CSS_SELECTOR, "#alerts li.alert"), 5, every=0.02)
    shown_after = time.time() - feed.producer.alert_started_at
    assert shown_after < ALERT_SHOWN_WITHIN_S, f"the alert appeared {shown_after:.2f} s after it was published"
    print(f"the alert appeared in the page {shown_after:.3f} s after it was published")
    item = browser.find_element(By.CSS_SELECTOR, "#alerts li.alert")
    assert item.find_element(By.CSS_SELECTOR, ".label").text == feed.producer.scenario.label
    assert item.find_element(By.CSS_SELECTOR, ".source").text == sources[0]
    assert item.find_element(By.CSS_SELECTOR, ".trigger").text == "heard"    # the heard/seen/both badge

    # It closes; its snapshot loads; the second source shows that it stalled.
    assert feed.producer.alert_ended.wait(10)
    _wait("the alert to close", lambda: item.get_attribute("data-open") == "false", 3)
    _wait("the alert's snapshot", lambda: browser.execute_script(
        "const i = document.querySelector('#alerts li.alert .snapshot'); return i && !i.hidden && i.naturalWidth;"), 5)
    _wait("the second source's stalled state",
          lambda: tiles[1].find_element(By.CSS_SELECTOR, ".state").text == "stalled", 5)
    assert "end 4.5 s" in item.find_element(By.CSS_SELECTOR, ".times").text
    assert not item.find_element(By.CSS_SELECTOR, ".open").is_displayed()
    # Its clip plays in the list, beside the heard/seen badge (the screenshot shows both).
    player = _loaded_clip_player(browser, item)
    browser.execute_script("const v = arguments[0]; v.muted = true; v.currentTime = 1.0; v.play();", player)
    _wait("the clip to play", lambda: browser.execute_script(    # decoded frames of the event, shown
        "const v = arguments[0]; if (v.currentTime >= 1.5) { v.pause(); return v.videoWidth > 0; }", player), 10)
    time.sleep(0.3)
    assert item.find_element(By.CSS_SELECTOR, ".trigger").text == "heard"

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



def test_page_follows_a_real_watch_of_a_generated_stream(browser, xd_grid_run: Path, tmp_path: Path) -> None:
    """The same page fed by ``watch`` itself: a generated stream (the stand-in's scene with
    a violent event at 3 s) paced as a camera, scored by the stand-in's MIL run. The tile
    and its moving timeline show, the alert appears in the list within a few seconds of
    the event, and ``/api/alerts`` and ``/api/events`` carry the alerts of the JSON lines.
    With ``--clips``, the closed alert shows its clip in a player that loads it (a
    screenshot: ``reports/live/web_view_clip.png``)."""
    import io
    import json
    import threading
    import urllib.request

    from selenium.webdriver.common.by import By

    from live import AlertConfig, ClipConfig, JsonLinesSink, WatchConfig, load_watch_predictor, parse_source, run_watch
    from synth.live_stream import StreamEvent, StreamPlan, write_stream

    video = tmp_path / "cam.ts"
    write_stream(str(video), StreamPlan(seconds=9.0, seed=5, size=(64, 48), event=StreamEvent(3.0, 6.0, "B1")),
                 realtime=False)
    predictor, run_steps = load_watch_predictor(xd_grid_run)
    source = parse_source(str(video), realtime=True)
    view = WebView(WebConfig(port=0, threshold=0.5, timeline_s=60.0), sources=(source.name,))
    url = view.start()
    lines = io.StringIO()
    hub = EventHub([JsonLinesSink(lines), view])
    sse: list[dict] = []

    def subscribe() -> None:  # another tool on the event stream
        with urllib.request.urlopen(url + "api/events", timeout=30) as response:
            for raw in response:
                text = raw.decode().strip()
                if text.startswith("data: "):
                    sse.append(json.loads(text[6:]))

    threading.Thread(target=subscribe, daemon=True).start()
    browser.get(url)
    config = WatchConfig(frames=True, alerts=AlertConfig(cooldown=2.0),
                         clips=ClipConfig(str(tmp_path / "clips"), pre_s=1.0, post_s=1.0, buffer_s=20.0))
    began = time.time()
    watcher = threading.Thread(target=run_watch, args=(predictor, [source], config, hub),
                               kwargs={"run_steps": run_steps}, daemon=True)
    watcher.start()
    tile = _wait("the source's tile", lambda: browser.find_elements(By.CSS_SELECTOR, ".tile"), 5)[0]

    def last_t() -> float:
        value = tile.find_element(By.CSS_SELECTOR, ".chart").get_attribute("data-last-t")
        return float(value) if value else -1.0

    t1 = _wait("the timeline to have points", lambda: last_t() > 0 and last_t(), 10)
    _wait("the timeline to move", lambda: last_t() > t1, 5)
    _wait("a frame in the tile", lambda: tile.get_attribute("data-frame-t"), 5)
    _wait("the alert in the list", lambda: browser.find_elements(By.CSS_SELECTOR, "#alerts li.alert"), 15, every=0.05)
    shown = time.time() - began
    assert shown < 3.0 + 4.0, f"the alert appeared {shown:.1f} s after the stream began (the event starts at 3 s)"
    watcher.join(30)
    assert not watcher.is_alive()
    with urllib.request.urlopen(url + "api/alerts", timeout=5) as response:
        api = json.loads(response.read())["alerts"]
    _wait("the event stream to carry the alert's end", lambda: any(e.get("type") == "alert_end" for e in sse), 5)
    assert api[0]["clip"] and api[0]["clip_url"]                                    # --clips: its player loads it
    player = _loaded_clip_player(browser, browser.find_element(By.ID, "alerts"))
    browser.execute_script("arguments[0].currentTime = 2.0;", player)   # a frame of the event, decoded
    _wait("a frame of the clip in the player", lambda: browser.execute_script(
        "const v = arguments[0]; return !v.seeking && v.readyState >= 2 && v.videoWidth > 0;", player), 10)
    write_bytes(SCREENSHOT.with_name("web_view_clip.png"), browser.get_screenshot_as_png())
    hub.close()
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    alerts = [e for e in events if e["type"].startswith("alert_")]
    assert [e["type"] for e in alerts] == ["alert_start", "alert_end"]
    assert abs(alerts[0]["t_start"] - 3.0) <= 0.6667 + 0.05
    assert [e for e in sse if e.get("type", "").startswith("alert_")] == alerts      # the event stream: the same
    assert len(api) == 1 and {k: api[0][k] for k in alerts[-1]} == alerts[-1]      # /api/alerts: the alert, closed


def test_a_real_watch_shows_the_heard_badge_and_plays_the_alerts_clip(browser, tmp_path: Path) -> None:
    """The page fed by ``run_watch`` with a fused run that hears one anomaly and sees
    another (``tests/attribution_run.py``), over a camera-paced file whose anomaly is only
    in the sound (a 2.5 kHz tone from 3 to 6 s): the alert in the list says ``heard``, its
    clip loads and shows a frame, and the page's screenshot is the one the docs show
    (``reports/live/web_view_real.png``; docs/live_view.png is a copy)."""
    import threading

    from selenium.webdriver.common.by import By

    from apply import PredictConfig, load_predictor
    from live import AlertConfig, ClipConfig, WatchConfig, parse_source, run_watch
    from tests.attribution_run import build_attribution_run, cue
    from tests.media_factory import write_clip

    run = build_attribution_run(tmp_path / "attribution")
    brightness, tone = cue("heard", 3.0, 6.0)
    video = write_clip(tmp_path / "front_door.mp4", duration=9.0, fps=8, size=(192, 144), brightness=brightness,
                       tone_hz=tone, sample_rate=16000, gop=8)
    predictor = load_predictor(run, PredictConfig(device="cpu"))
    source = parse_source(str(video), realtime=True, name="front_door")
    view = WebView(WebConfig(port=0, threshold=0.5, timeline_s=60.0), sources=(source.name,))
    url = view.start()
    hub = EventHub([view])
    browser.get(url)
    config = WatchConfig(window=2.0, hop=1.0, frames=True,
                         alerts=AlertConfig(threshold=0.5, min_duration=0.5, cooldown=1.0),
                         clips=ClipConfig(str(tmp_path / "clips"), pre_s=1.0, post_s=1.0, buffer_s=20.0))
    watcher = threading.Thread(target=run_watch, args=(predictor, [source], config, hub),
                               kwargs={"run_steps": 4}, daemon=True)
    watcher.start()
    try:
        badge = _wait("the alert's heard/seen badge", lambda: [b for b in browser.find_elements(
            By.CSS_SELECTOR, "#alerts li.alert .trigger") if b.text], 30)[0]
        assert badge.text == "heard", badge.text
        player = _wait("the clip's player", lambda: [v for v in browser.find_elements(
            By.CSS_SELECTOR, "#alerts video.clip") if v.is_displayed()], 30)[0]
        browser.execute_script("arguments[0].preload = 'auto'; arguments[0].load();", player)
        _wait("the clip to load in the player", lambda: browser.execute_script(
            "const v = arguments[0]; return !v.error && v.readyState >= 1 && v.duration > 0;", player), 10)
        browser.execute_script("arguments[0].currentTime = 2.0;", player)
        _wait("a frame of the clip in the player", lambda: browser.execute_script(
            "const v = arguments[0]; return !v.seeking && v.readyState >= 2 && v.videoWidth > 0;", player), 10)
        write_bytes(SCREENSHOT.with_name("web_view_real.png"), browser.get_screenshot_as_png())
    finally:
        watcher.join(30)
        hub.close()
    assert not watcher.is_alive()
