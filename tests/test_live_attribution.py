"""Heard, seen or both (``apply.attribution``) and the watch's Prometheus metrics
(``live.metrics``), on a tiny fused run that hears one anomaly and sees another
(``tests/attribution_run.py``): real encoded files whose event is only in the audio, or
only in the picture, through ``predict --json`` and a watch; the watch's ``/metrics``
scraped over HTTP (the ``--serve`` port with its token, and a port of its own) and parsed
with the client library's parser, its counters checked against the JSON lines."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from apply.attribution import BOTH, HEARD, SEEN, trigger_of
from cache_schema import InvalidInput
from live import AlertConfig, AlertTracker, EventHub, JsonLinesSink, WatchConfig, parse_source, run_watch
from live.metrics import MetricsServer, WatchMetrics
from tests.attribution_run import build_attribution_run, write_cue_clip

pytestmark = pytest.mark.usefixtures("one_thread")

EVENT = (3.0, 6.0)      # the cue's media time in the 8 s test files
TOKEN = "metrics-test-token"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_attribution_run(tmp_path_factory.mktemp("attribution"))


@pytest.fixture(scope="module")
def files(run: Path) -> dict[str, Path]:
    """8 s files (not in training) whose cue lasts from 3 to 6 s: heard, seen, none."""
    return {kind: write_cue_clip(run.parent / "test" / f"{kind}.mp4", kind, duration=8.0, start=EVENT[0], end=EVENT[1])
            for kind in ("heard", "seen", "none")}


@pytest.fixture(scope="module")
def predictor(run: Path):
    from apply import PredictConfig, load_predictor

    return load_predictor(run, PredictConfig(device="cpu"))


def test_the_trigger_rule() -> None:
    assert trigger_of(0.9, 0.2, 0.5) == HEARD
    assert trigger_of(0.1, 0.7, 0.5) == SEEN
    assert trigger_of(0.9, 0.8, 0.5) == BOTH            # either alone would have raised it
    assert trigger_of(0.3, 0.4, 0.5) == BOTH            # only the two together
    assert trigger_of(None, 0.8, 0.5) == SEEN           # no audio at that step: the picture
    assert trigger_of(0.6, 0.55, 0.7) == BOTH           # the camera's own threshold decides
    assert trigger_of(None, None, 0.5) is None          # a run that reads one modality


def test_an_alert_takes_the_trigger_of_its_peak_step() -> None:
    tracker = AlertTracker("cam", AlertConfig(threshold=0.5, min_duration=0.5, cooldown=1.0))
    steps = [(0.9, {"audio": 0.2, "video": 0.9}), (0.97, {"audio": 0.95, "video": 0.3}),
             (0.8, {"audio": 0.1, "video": 0.85})] + [(0.1, {"audio": 0.1, "video": 0.1})] * 4
    events = []
    for i, (score, evidence) in enumerate(steps):
        events += [e for e, _ in tracker.update(i * 0.5, (i + 1) * 0.5, score, "anomaly", 0.0, None, evidence)]
    assert [e.type for e in events] == ["alert_start", "alert_end"]
    start, end = events
    assert start.trigger == SEEN                         # the peak so far: the first step
    assert end.trigger == HEARD and end.peak_score == 0.97 and end.peak_evidence == {"audio": 0.95, "video": 0.3}
    assert end.to_json()["trigger"] == HEARD


def test_predict_json_names_the_modality(run: Path, files: dict[str, Path]) -> None:
    from cli import main

    result = CliRunner().invoke(main, ["predict", str(run), *(str(files[k]) for k in ("heard", "seen", "none")),
                                       "--json", "--window", "2", "--hop", "1", "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    heard, seen, none = (json.loads(line) for line in result.output.splitlines() if line.startswith("{"))
    assert heard["trigger"] == HEARD and seen["trigger"] == SEEN and none["trigger"] is None
    for pred, kept in ((heard, "audio"), (seen, "video")):
        assert pred["segments"] and all(s["trigger"] == pred["trigger"] for s in pred["segments"])
        inside = [s for s in pred["steps"] if EVENT[0] + 0.5 <= s["t"] <= EVENT[1] - 0.5]
        outside = [s for s in pred["steps"] if s["t"] < EVENT[0] - 1.5]
        assert inside and outside
        other = "video" if kept == "audio" else "audio"
        assert all(s["evidence"][kept] >= 0.5 > s["evidence"][other] for s in inside)
        assert all(s["evidence"][kept] < 0.5 for s in outside)
        assert all(set(w["evidence"]) == {"audio", "video"} for w in pred["windows"])


def test_single_modality_predictions_carry_no_evidence(predictor, files: dict[str, Path]) -> None:
    pred = predictor.predict(files["heard"])   # whole-file mode
    assert pred.to_json()["trigger"] == HEARD and pred.evidence is not None
    pred.evidence = None                       # as a single-modality run leaves it
    out = pred.to_json()
    assert out["trigger"] is None and all("evidence" not in s for s in out["steps"])


def _watch(predictor, sources, metrics: WatchMetrics | None = None, sinks=()) -> list[dict]:
    buf = io.StringIO()
    config = WatchConfig(window=2.0, hop=1.0, alerts=AlertConfig(threshold=0.5, min_duration=0.5, cooldown=1.0))
    run_watch(predictor, [parse_source(str(s)) for s in sources], config, EventHub([JsonLinesSink(buf), *sinks]),
              threading.Event(), metrics=metrics)
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_watch_alerts_say_heard_or_seen_and_metrics_match_the_events(predictor, files: dict[str, Path]) -> None:
    from live.web import WebConfig, WebView

    sources = [files["heard"], files["seen"], files["none"]]
    names = [parse_source(str(s)).name for s in sources]
    metrics = WatchMetrics(names)
    view = WebView(WebConfig(port=0, token=TOKEN), sources=tuple(names), metrics=metrics)
    url = view.start()
    try:
        events = _watch(predictor, sources, metrics, sinks=[view])
        # the browser view's state JSON carries the trigger (the page's badge)
        status, body = _get(url + "api/alerts", TOKEN)
        assert status == 200
        shown = {a["source"]: a["trigger"] for a in json.loads(body)["alerts"]}
        # /metrics on the --serve port: the token rule holds
        assert _get(url + "metrics")[0] == 401
        assert _get(url + "metrics", "wrong")[0] == 401
        status, text = _get(url + "metrics", TOKEN)
        assert status == 200
    finally:
        view.close()

    records = [e for e in events if e["type"] == "score"]
    alerts = [e for e in events if e["type"] == "alert_end"]
    by_source = {name: [a for a in alerts if a["source"] == name] for name in names}
    heard, seen, none = names
    assert [a["trigger"] for a in by_source[heard]] == [HEARD]
    assert [a["trigger"] for a in by_source[seen]] == [SEEN]
    assert by_source[none] == []
    assert shown == {heard: HEARD, seen: SEEN}
    for a in alerts:   # the alert lies on the cue, and its peak's evidence is what named it
        assert EVENT[0] - 2.0 <= a["t_start"] and a["t_end"] <= EVENT[1] + 2.0
        kept = "audio" if a["trigger"] == HEARD else "video"
        assert a["peak_evidence"][kept] >= 0.5
    assert all(set(r["evidence"]) == {"audio", "video"} and r["evidence"]["audio"] is not None for r in records)

    samples = _samples(text)
    for name in names:
        cam = (("camera", name),)
        n = sum(r["source"] == name for r in records)
        assert n > 0
        assert samples[("avar_steps_scored_total", cam)] == n
        assert samples[("avar_latency_seconds_count", cam)] == n
        assert samples[("avar_latency_seconds_bucket", (*cam, ("le", "+Inf")))] == n
        assert samples[("avar_backbone_seconds_count", cam)] == n and samples[("avar_backbone_seconds_sum", cam)] > 0
        assert samples[("avar_frames_total", cam)] >= 8 * 8 - 2        # 8 s at 8 fps
        assert samples[("avar_packets_total", (*cam, ("stream", "video")))] >= 60
        assert samples[("avar_packets_total", (*cam, ("stream", "audio")))] > 0
        assert samples[("avar_steps_dropped_total", cam)] == 0
        assert samples[("avar_stalls_total", cam)] == sum(e["type"] == "stalled" and e["source"] == name
                                                          for e in events)
    assert samples[("avar_alerts_total", (("camera", heard), ("trigger", HEARD)))] == 1
    assert samples[("avar_alerts_total", (("camera", seen), ("trigger", SEEN)))] == 1
    assert samples[("avar_scoring_seconds_total", (("part", "backbones"),))] > 0
    assert any(name.startswith("avar_process_") for name, _ in samples)
    assert {dict(labels)["camera"] for _, labels in samples if "camera" in dict(labels)} == set(names)


def test_metrics_on_a_port_of_their_own(predictor, files: dict[str, Path]) -> None:
    metrics = WatchMetrics(["cam"])
    server = MetricsServer(metrics, "127.0.0.1", 0, token=TOKEN)
    url = server.start()
    try:
        assert _get(url)[0] == 401
        assert _get(f"{url}?token={TOKEN}")[0] == 401       # the header only, never the token in the URL
        status, text = _get(url, TOKEN)
        assert status == 200
        assert _samples(text)[("avar_steps_scored_total", (("camera", "cam"),))] == 0   # there before any step
    finally:
        server.close()
    # beyond loopback without a token: refused before anything is bound (as --serve)
    with pytest.raises(InvalidInput, match="token"):
        MetricsServer(WatchMetrics(), "0.0.0.0", 0)


def test_watch_metrics_flag(run: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from cli import main

    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(main, ["watch", str(run), str(files["heard"]), "--window", "2", "--hop", "1",
                                       "--min-duration", "0.5", "--cooldown", "1", "--metrics", "127.0.0.1:0",
                                       "--out", str(out), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in out.read_text().splitlines() if '"alert_end"' in line]
    assert [a["trigger"] for a in alerts] == [HEARD]
    refused = CliRunner().invoke(main, ["watch", str(run), str(files["heard"]), "--metrics", "0.0.0.0:0"])
    assert refused.exit_code == 2 and "token" in refused.output
