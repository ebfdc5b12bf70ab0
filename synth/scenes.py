"""Class recipes: what each class looks and sounds like, and the frame/audio synthesis.

A clip is a *scene* (its source video: background, furniture, ambient soundscape) plus
per-clip *nuisance* (brightness, colour cast, sensor noise, camera shake, a harmless
distractor ball, distractor chirps, levels) plus the *events* of its class. Every event
has a visual pattern and an audio pattern (either may be ``None``), and a window
``[start, end)`` in seconds. Outside its events a clip looks and sounds like ``normal``.

The recipes are built around three kinds of class pairs (see ``PAIRS`` and
docs/synthetic.md): pairs that share the visual pattern and differ only in audio, pairs
that share the soundscape and differ only in video, and pairs made of the same events in a
different temporal arrangement (swapped order, or early versus late). All event parameters
of a pair are drawn from the same distributions, so the wrong modality (or an order-blind
pooling) cannot tell the two classes apart.

Everything is a pure function of the plan (``ClipPlan``) and of the time axis, so the
same plan renders the same content at any resolution, frame rate or sample rate; the
randomness lives in the plan (drawn from per-clip generators by generator.py) and in
per-clip noise seeds.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

CLASSES: tuple[str, ...] = (
    "abuse", "baby_cry", "crash", "brawling", "explosion",
    "intruder", "normal", "pain", "police_siren", "vandalism",
)

# (class a, class b, what separates them). Every pair differs in exactly one factor.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("baby_cry", "pain", "audio"),        # same rocking person; high wails vs low groans
    ("normal", "police_siren", "audio"),  # same calm scene; ambience vs an off-screen siren
    ("normal", "intruder", "video"),      # same ambience; empty scene vs a dark figure
    ("pain", "abuse", "video"),           # same groans; a person alone vs a person beaten
    ("explosion", "crash", "order"),      # bang -> vehicle vs vehicle -> bang
    ("brawling", "vandalism", "order"),   # the same scuffle early vs late in the clip
)

# What each class is made of: (visual pattern, audio pattern) of each event, and the rule
# for placing the events in time (``_event_windows``).
RECIPES: dict[str, dict] = {
    "normal": {"events": (), "timing": "none"},
    "intruder": {"events": (("figure", "figure", None),), "timing": "single"},
    "police_siren": {"events": (("siren", None, "siren"),), "timing": "single"},
    "baby_cry": {"events": (("cry", "person", "cry"),), "timing": "single"},
    "pain": {"events": (("groan", "person", "groan"),), "timing": "single"},
    "abuse": {"events": (("beating", "strike", "groan"),), "timing": "single"},
    "brawling": {"events": (("scuffle", "scuffle", "thuds"),), "timing": "early"},
    "vandalism": {"events": (("scuffle", "scuffle", "thuds"),), "timing": "late"},
    "explosion": {"events": (("bang", "bang", "bang"), ("vehicle", "sweep", "sweep")), "timing": "pair"},
    "crash": {"events": (("vehicle", "sweep", "sweep"), ("bang", "bang", "bang")), "timing": "pair"},
}
assert set(RECIPES) == set(CLASSES)


# --------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Scene:
    """What a source video fixes: the background and the ambient soundscape."""

    source: str
    bg_colours: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_angle: float
    floor: tuple[float, tuple[float, float, float]]          # (top y, colour)
    furniture: tuple[tuple[float, float, float, float, tuple[float, float, float]], ...]
    texture: tuple[tuple[float, float, float, float], ...]   # (kx, ky, phase, amplitude)
    noise_beta: float        # ambient noise colour: power ~ 1/f**beta
    hum_freq: float
    hum_amps: tuple[float, ...]
    amb_level: float         # ambient RMS before the per-clip factor


@dataclass(frozen=True)
class Event:
    name: str
    video: str | None
    audio: str | None
    start: float
    end: float
    params: dict = field(default_factory=dict, compare=False)

    def to_meta(self) -> dict:
        return {"name": self.name, "start": round(self.start, 4), "end": round(self.end, 4),
                "video": self.video, "audio": self.audio}


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip's content, independent of its encoding."""

    label: str
    duration: float
    scene: Scene
    events: tuple[Event, ...]
    nuisance: dict
    noise_seed: tuple[int, ...]   # seeds the sample-level noise of video and audio


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def draw_scene(rng: np.random.Generator, source: str) -> Scene:
    """A background: desaturated mid-tone colours (so that the saturated or very dark
    event objects stand out), furniture blocks, a floor band, a faint texture; and an
    ambient soundscape: coloured noise plus a hum."""
    c1 = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.85))
    c2 = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.8))
    floor = (float(rng.uniform(0.7, 0.9)), _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.6)))
    furniture = []
    for _ in range(int(rng.integers(2, 6))):
        w, h = rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.4)
        x0, y0 = rng.uniform(-0.05, 1.0 - w), rng.uniform(0.05, 0.9 - h)
        furniture.append((float(x0), float(y0), float(x0 + w), float(y0 + h),
                          _hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.85))))
    texture = tuple((float(rng.uniform(2, 12)), float(rng.uniform(2, 12)), float(rng.uniform(0, 2 * np.pi)),
                     float(rng.uniform(0.01, 0.04))) for _ in range(3))
    n_harm = int(rng.integers(1, 4))
    return Scene(
        source=source, bg_colours=(c1, c2), bg_angle=float(rng.uniform(0, 2 * np.pi)), floor=floor,
        furniture=tuple(furniture), texture=texture,
        noise_beta=float(rng.uniform(0.0, 1.6)), hum_freq=float(rng.uniform(50, 240)),
        hum_amps=tuple(float(rng.uniform(0.1, 0.5)) / (k + 1) for k in range(n_harm)),
        amb_level=float(rng.uniform(0.012, 0.03)),
    )


def _event_windows(timing: str, names: tuple[str, ...], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Event windows as fractions of the clip. Every window spans at least 0.15 of the
    clip (1.5 steps of 10); a single event spans 0.35-0.5."""
    if timing == "none":
        return []
    if timing == "single":
        length = rng.uniform(0.35, 0.5)
        start = rng.uniform(0.08, 0.92 - length)
        return [(start, start + length)]
    if timing in ("early", "late"):
        # Mirror images of one distribution: only the position in the clip differs.
        start, length = rng.uniform(0.03, 0.12), rng.uniform(0.3, 0.36)
        if timing == "late":
            start = 1.0 - start - length
        return [(start, start + length)]
    if timing == "pair":
        # Both orders draw the same lengths and gap; only which event comes first differs.
        lengths = {"bang": rng.uniform(0.15, 0.22), "vehicle": rng.uniform(0.25, 0.33)}
        gap, start = rng.uniform(0.0, 0.05), rng.uniform(0.08, 0.35)
        first, second = names
        a1 = start + lengths[first]
        return [(start, a1), (a1 + gap, a1 + gap + lengths[second])]
    raise ValueError(f"unknown timing {timing!r}")


def _person_params(rng: np.random.Generator) -> dict:
    rx = rng.uniform(0.2, 0.25)
    return {
        "cx": rng.uniform(0.38, 0.62), "cy": rng.uniform(0.52, 0.62), "rx": rx, "ry": rx * rng.uniform(1.25, 1.45),
        "colour": _hsv(rng.uniform(-0.03, 0.13), rng.uniform(0.55, 0.85), rng.uniform(0.8, 1.0)),
        "head_colour": _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.35, 0.6), rng.uniform(0.85, 1.0)),
        "rock_f": rng.uniform(0.5, 1.1), "rock_a": rng.uniform(0.05, 0.09), "phase": rng.uniform(0, 2 * np.pi),
    }


def _figure_params(rng: np.random.Generator) -> dict:
    return {
        "side": float(rng.choice([-1.0, 1.0])), "x": rng.uniform(0.35, 0.65), "cy": rng.uniform(0.5, 0.58),
        "scale": rng.uniform(1.0, 1.2),
        "colour": _hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.04, 0.14)),
        "sway": rng.uniform(0.5, 0.9), "phase": rng.uniform(0, 2 * np.pi),
    }


def _video_params(pattern: str | None, rng: np.random.Generator) -> dict:
    if pattern is None:
        return {}
    if pattern == "person":
        return {"person": _person_params(rng)}
    if pattern == "figure":
        return {"figure": _figure_params(rng)}
    if pattern == "strike":
        person = _person_params(rng)
        fig = _figure_params(rng)
        fig["x"] = float(np.clip(person["cx"] + fig["side"] * rng.uniform(0.3, 0.36), 0.1, 0.9))
        return {"person": person, "figure": fig, "hit_f": rng.uniform(1.4, 2.4), "hit_phase": rng.uniform(0, 1),
                "flash": _hsv(rng.uniform(-0.03, 0.03), rng.uniform(0.7, 1.0), 1.0)}
    if pattern == "scuffle":
        h = rng.random()
        return {
            "colours": (_hsv(h, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)),
                        _hsv(h + 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.95))),
            "cx": rng.uniform(0.4, 0.6), "cy": rng.uniform(0.45, 0.6), "r": rng.uniform(0.17, 0.22),
            "freqs": tuple(rng.uniform(2.5, 7.5, size=8)), "phases": tuple(rng.uniform(0, 2 * np.pi, size=8)),
            "flicker_f": rng.uniform(6, 11),
        }
    if pattern == "bang":
        return {"cx": rng.uniform(0.3, 0.7), "cy": rng.uniform(0.35, 0.65),
                "fire": _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.8, 1.0), 1.0),
                "smoke": rng.uniform(0.1, 0.3)}
    if pattern == "sweep":
        return {"dir": float(rng.choice([-1.0, 1.0])), "cy": rng.uniform(0.5, 0.65), "w": rng.uniform(0.55, 0.7),
                "h": rng.uniform(0.34, 0.42),
                "colour": _hsv(rng.random(), rng.uniform(0.65, 0.95), rng.uniform(0.45, 0.8))}
    raise ValueError(f"unknown visual pattern {pattern!r}")


def _bursts(rng: np.random.Generator, length: float, on: tuple[float, float], off: tuple[float, float]) -> list:
    out, t = [], float(rng.uniform(0.0, 0.15))
    while t < length - 0.15:
        d = float(rng.uniform(*on))
        out.append((t, min(t + d, length)))
        t += d + float(rng.uniform(*off))
    return out


def _audio_params(pattern: str | None, rng: np.random.Generator, length: float) -> dict:
    if pattern is None:
        return {}
    gain = float(rng.uniform(0.75, 1.25))
    pan = float(rng.uniform(-0.6, 0.6))
    if pattern == "cry":
        return {"gain": gain, "pan": pan, "f0": rng.uniform(380, 560), "vib_f": rng.uniform(5, 7.5),
                "bursts": _bursts(rng, length, (0.45, 0.9), (0.12, 0.3))}
    if pattern == "groan":
        return {"gain": gain, "pan": pan, "f0": rng.uniform(85, 140),
                "bursts": _bursts(rng, length, (0.9, 1.7), (0.25, 0.55))}
    if pattern == "siren":
        return {"gain": gain, "pan": pan, "fc": rng.uniform(850, 1100), "fd": rng.uniform(280, 420),
                "period": rng.uniform(1.2, 2.6), "phase": rng.uniform(0, 2 * np.pi)}
    if pattern == "thuds":
        hits, t = [], float(rng.uniform(0, 0.1))
        while t < length - 0.05:
            hits.append((t, float(rng.uniform(55, 120)), float(rng.uniform(0.5, 1.0))))
            t += float(rng.uniform(0.12, 0.4))
        return {"gain": gain, "pan": pan, "hits": hits, "shouts": _bursts(rng, length, (0.2, 0.45), (0.5, 1.2))}
    if pattern == "bang":
        return {"gain": gain, "pan": pan, "boom_f": rng.uniform(38, 70), "decay": rng.uniform(0.15, 0.3)}
    if pattern == "sweep":
        return {"gain": gain, "pan": pan, "f0": rng.uniform(65, 95), "rise": rng.uniform(1.2, 1.6)}
    raise ValueError(f"unknown audio pattern {pattern!r}")


def draw_events(label: str, duration: float, rng: np.random.Generator) -> tuple[Event, ...]:
    """The events of one clip of class ``label``, with times in seconds."""
    recipe = RECIPES[label]
    specs = recipe["events"]
    wins = _event_windows(recipe["timing"], tuple(name for name, _, _ in specs), rng)
    events = []
    for (name, vpat, apat), (u0, u1) in zip(specs, wins):
        t0, t1 = u0 * duration, u1 * duration
        params = {"v": _video_params(vpat, rng), "a": _audio_params(apat, rng, t1 - t0)}
        events.append(Event(name, vpat, apat, float(t0), float(t1), params))
    return tuple(events)


MAX_NUISANCE_SHAKE = 0.012


def draw_nuisance(rng: np.random.Generator, duration: float) -> dict:
    """Per-clip nuisance, drawn identically for every class."""
    ball = None
    if rng.random() < 0.5:
        t0 = float(rng.uniform(0, duration * 0.7))
        t1 = float(min(duration, t0 + rng.uniform(0.3, 0.7) * duration))
        y0, y1 = rng.uniform(0.1, 0.9, size=2)
        x0, x1 = (-0.1, 1.1) if rng.random() < 0.5 else (1.1, -0.1)
        ball = {"t0": t0, "t1": t1, "x0": x0, "x1": x1, "y0": float(y0), "y1": float(y1),
                "r": float(rng.uniform(0.035, 0.07)),
                "colour": _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0))}
    chirps = []
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            chirps.append((float(rng.uniform(0, duration)), float(rng.uniform(1800, 4200)),
                           float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.01, 0.035))))
    return {
        "gain": float(rng.uniform(0.75, 1.2)),
        "cast": tuple(float(c) for c in rng.uniform(0.9, 1.1, size=3)),
        "drift_a": float(rng.uniform(0.0, 0.08)), "drift_f": float(rng.uniform(0.1, 0.5)),
        "drift_p": float(rng.uniform(0, 2 * np.pi)),
        "noise": float(rng.uniform(0.004, 0.03)),
        "shake": float(rng.uniform(0.0, MAX_NUISANCE_SHAKE)),
        "shake_f": tuple(float(f) for f in rng.uniform(0.3, 2.5, size=4)),
        "shake_p": tuple(float(p) for p in rng.uniform(0, 2 * np.pi, size=4)),
        "ball": ball,
        "amb": float(rng.uniform(0.7, 1.4)),
        "chirps": chirps,
        "audio_gain": float(rng.uniform(0.7, 1.1)),
    }


# --------------------------------------------------------------------------- video

def _smooth(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _fade(tau: float, edge: float = 0.08) -> float:
    return _smooth(tau / edge) * _smooth((1.0 - tau) / edge)


class _Canvas:
    """A float32 RGB frame with anti-aliased shape drawing in normalised coordinates
    (x, y in [0, 1] across the frame), offset by the current camera shake."""

    def __init__(self, img: np.ndarray, dx: float, dy: float):
        self.img = img
        self.h, self.w = img.shape[:2]
        self.dx, self.dy = dx, dy  # shake, in normalised units

    def _box(self, x0: float, y0: float, x1: float, y1: float):
        c0 = max(int(math.floor((x0 + self.dx) * self.w)) - 1, 0)
        c1 = min(int(math.ceil((x1 + self.dx) * self.w)) + 1, self.w)
        r0 = max(int(math.floor((y0 + self.dy) * self.h)) - 1, 0)
        r1 = min(int(math.ceil((y1 + self.dy) * self.h)) + 1, self.h)
        if c0 >= c1 or r0 >= r1:
            return None
        xs = (np.arange(c0, c1, dtype=np.float32) + 0.5) / self.w - self.dx
        ys = (np.arange(r0, r1, dtype=np.float32) + 0.5) / self.h - self.dy
        return (slice(r0, r1), slice(c0, c1)), xs[None, :], ys[:, None]

    def _blend(self, sl, cover: np.ndarray, colour, alpha: float) -> None:
        a = (cover * alpha)[..., None]
        region = self.img[sl]
        region *= 1.0 - a
        region += a * np.asarray(colour, dtype=np.float32)

    def ellipse(self, cx, cy, rx, ry, colour, alpha=1.0) -> None:
        box = self._box(cx - rx, cy - ry, cx + rx, cy + ry)
        if box is None or alpha <= 0:
            return
        sl, xs, ys = box
        d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        px = min(rx * self.w, ry * self.h)
        cover = np.clip((1.0 - d) * px + 0.5, 0.0, 1.0)
        self._blend(sl, cover, colour, alpha)

    def rect(self, x0, y0, x1, y1, colour, alpha=1.0) -> None:
        box = self._box(x0, y0, x1, y1)
        if box is None or alpha <= 0:
            return
        sl, xs, ys = box
        cx = np.clip(np.minimum(xs - x0, x1 - xs) * self.w + 0.5, 0, 1)
        cy = np.clip(np.minimum(ys - y0, y1 - ys) * self.h + 0.5, 0, 1)
        self._blend(sl, cx * cy, colour, alpha)

    def capsule(self, x0, y0, x1, y1, width, colour, alpha=1.0) -> None:
        box = self._box(min(x0, x1) - width, min(y0, y1) - width, max(x0, x1) + width, max(y0, y1) + width)
        if box is None or alpha <= 0:
            return
        sl, xs, ys = box
        # distances in pixels
        ax, ay = x0 * self.w, y0 * self.h
        bx, by = x1 * self.w, y1 * self.h
        px, py = xs * self.w, ys * self.h
        vx, vy = bx - ax, by - ay
        t = np.clip(((px - ax) * vx + (py - ay) * vy) / max(vx * vx + vy * vy, 1e-9), 0, 1)
        d = np.sqrt((px - ax - t * vx) ** 2 + (py - ay - t * vy) ** 2)
        cover = np.clip(width * min(self.w, self.h) - d + 0.5, 0, 1)
        self._blend(sl, cover, colour, alpha)

    def wash(self, colour, alpha: float) -> None:
        if alpha > 0:
            self.img *= 1.0 - alpha
            self.img += alpha * np.asarray(colour, dtype=np.float32)


def render_background(scene: Scene, width: int, height: int, pad: int) -> np.ndarray:
    """The scene at this resolution, with ``pad`` extra pixels on every side for shake."""
    ys = ((np.arange(-pad, height + pad, dtype=np.float32) + 0.5) / height)[:, None]
    xs = ((np.arange(-pad, width + pad, dtype=np.float32) + 0.5) / width)[None, :]
    g = 0.5 + 0.5 * (np.cos(scene.bg_angle) * (xs - 0.5) + np.sin(scene.bg_angle) * (ys - 0.5)) * 1.4
    g = np.clip(g, 0, 1)[..., None]
    c1, c2 = (np.asarray(c, np.float32) for c in scene.bg_colours)
    img = (c1 * (1 - g) + c2 * g).astype(np.float32)
    tex = sum(a * np.sin(2 * np.pi * (kx * xs + ky * ys) + p) for kx, ky, p, a in scene.texture)
    img += tex[..., None].astype(np.float32)
    canvas = _Canvas(img, pad / width, pad / height)
    fy, fcol = scene.floor
    canvas.rect(-1.0, fy, 2.0, 2.0, fcol)
    for x0, y0, x1, y1, col in scene.furniture:
        canvas.rect(x0, y0, x1, y1, col)
    return img


def _draw_person(c: _Canvas, p: dict, t: float, alpha: float) -> None:
    cx = p["cx"] + p["rock_a"] * math.sin(2 * math.pi * p["rock_f"] * t + p["phase"])
    pulse = 1.0 + 0.06 * math.sin(2 * math.pi * 1.3 * p["rock_f"] * t)
    rx, ry = p["rx"] * pulse, p["ry"] * pulse
    c.ellipse(cx, p["cy"], rx, ry, p["colour"], alpha)
    c.ellipse(cx + 0.3 * (cx - p["cx"]), p["cy"] - ry * 0.95, rx * 0.55, ry * 0.45, p["head_colour"], alpha)


def _figure_body(c: _Canvas, x: float, cy: float, s: float, colour, alpha: float) -> None:
    c.ellipse(x, cy, 0.17 * s, 0.36 * s, colour, alpha)
    c.ellipse(x, cy - 0.42 * s, 0.085 * s, 0.11 * s, colour, alpha)


def _event_shake(ev: Event, tau: float) -> float:
    """Extra camera shake (normalised amplitude) that a visual event brings."""
    if ev.video == "scuffle":
        return 0.03 * _fade(tau, 0.05)
    if ev.video == "bang":
        return 0.035 * (1.0 - tau)
    if ev.video == "sweep":
        return 0.012
    return 0.0


MAX_EVENT_SHAKE = 0.035


def _draw_event_video(c: _Canvas, ev: Event, tau: float, t: float) -> None:
    p = ev.params["v"]
    if ev.video == "person":
        _draw_person(c, p["person"], t, _fade(tau))
    elif ev.video == "figure":
        f = p["figure"]
        off = 0.5 + f["side"] * 0.8
        if tau < 0.3:
            x = off + (f["x"] - off) * _smooth(tau / 0.3)
            bob = 0.015 * abs(math.sin(2 * math.pi * 1.6 * t))
        elif tau < 0.75:
            x = f["x"] + 0.04 * math.sin(2 * math.pi * f["sway"] * t + f["phase"])
            bob = 0.0
        else:
            x = f["x"] + (off - f["x"]) * _smooth((tau - 0.75) / 0.25)
            bob = 0.015 * abs(math.sin(2 * math.pi * 1.6 * t))
        _figure_body(c, x, f["cy"] - bob, f["scale"], f["colour"], 1.0)
    elif ev.video == "strike":
        a = _fade(tau)
        person, f = p["person"], p["figure"]
        _draw_person(c, person, t, a)
        s = f["scale"]
        _figure_body(c, f["x"], f["cy"] - 0.05, s, f["colour"], a)
        ph = (p["hit_f"] * t + p["hit_phase"]) % 1.0
        swing = 0.5 - 0.5 * math.cos(2 * math.pi * ph)  # 0 = raised, 1 = hit
        sx, sy = f["x"], f["cy"] - 0.05 - 0.22 * s
        tx = person["cx"] + (sx - person["cx"]) * (1 - swing) * 0.5
        ty = person["cy"] - 0.05 + (sy - 0.35 - person["cy"]) * (1 - swing)
        c.capsule(sx, sy, tx, ty, 0.045 * s, f["colour"], a)
        if swing > 0.8:
            c.wash(p["flash"], 0.35 * a * (swing - 0.8) / 0.2)
    elif ev.video == "scuffle":
        a = _fade(tau, 0.05)
        fr, ph = p["freqs"], p["phases"]
        w = [math.sin(2 * math.pi * fr[k] * t + ph[k]) for k in range(8)]
        r = p["r"]
        xa, ya = p["cx"] - 0.1 + 0.09 * w[0], p["cy"] + 0.07 * w[1]
        xb, yb = p["cx"] + 0.1 + 0.09 * w[2], p["cy"] + 0.07 * w[3]
        ca, cb = p["colours"]
        c.ellipse(xa, ya, r, r * 1.5, ca, a)
        c.ellipse(xb, yb, r, r * 1.5, cb, a)
        c.capsule(xa, ya - 0.1, xb + 0.12 * w[4], yb - 0.2 + 0.1 * w[5], 0.035, ca, a)
        c.capsule(xb, yb - 0.1, xa + 0.12 * w[6], ya - 0.2 + 0.1 * w[7], 0.035, cb, a)
        c.wash((1.0, 1.0, 1.0) if w[4] > 0 else (0.0, 0.0, 0.0),
               a * 0.18 * abs(math.sin(2 * math.pi * p["flicker_f"] * t)))
    elif ev.video == "bang":
        fire = p["fire"]
        grow = math.sqrt(min(tau / 0.4, 1.0))
        r = 0.2 + 0.5 * grow
        fade = 1.0 - 0.55 * tau
        c.wash((0.1, 0.1, 0.1), p["smoke"] * min(tau * 2, 1.0))
        c.ellipse(p["cx"], p["cy"], r * 1.3, r, fire, 0.9 * fade)
        c.ellipse(p["cx"], p["cy"], r * 0.8, r * 0.6, (1.0, 0.95, 0.7), 0.9 * fade)
        if tau < 0.2:
            c.wash((1.0, 1.0, 0.95), 0.9 * (1.0 - tau / 0.2))
    elif ev.video == "sweep":
        x = 0.5 + p["dir"] * (-0.85 + 1.7 * tau)
        w, h, cy = p["w"], p["h"], p["cy"]
        for k, al in ((2, 0.25), (1, 0.45), (0, 1.0)):  # motion-blur trail
            xk = x - p["dir"] * k * 0.06
            c.rect(xk - w / 2, cy - h / 2, xk + w / 2, cy + h / 2, p["colour"], al)
        c.rect(x - w * 0.3, cy - h * 0.4, x + w * 0.3, cy - h * 0.05, (0.08, 0.1, 0.14), 1.0)
        for wx in (-0.3, 0.3):
            c.ellipse(x + wx * w, cy + h / 2, 0.06, 0.08, (0.03, 0.03, 0.03), 1.0)
    elif ev.video is not None:
        raise ValueError(f"unknown visual pattern {ev.video!r}")


def render_frames(plan: ClipPlan, width: int, height: int, times: np.ndarray) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames ``[height, width, 3]`` at the given presentation times."""
    nz = plan.nuisance
    pad = int(math.ceil(1.6 * (MAX_NUISANCE_SHAKE + MAX_EVENT_SHAKE) * max(width, height))) + 2
    bg = render_background(plan.scene, width, height, pad)
    rng = np.random.default_rng(list(plan.noise_seed) + [1])
    # Sensor noise: a bank of 3 noise images (mostly luminance), each used with either
    # sign, picked at random per frame; pre-scaled to 0-255 with the rounding offset in.
    bank = rng.standard_normal((3, height, width, 1), dtype=np.float32) \
        + 0.3 * rng.standard_normal((1, height, width, 3), dtype=np.float32)
    bank *= nz["noise"] * 255.0
    bank = np.concatenate([bank, -bank]) + np.float32(0.5)
    picks = rng.integers(0, len(bank), size=len(times))
    cast = np.asarray(nz["cast"], dtype=np.float32) * np.float32(255.0)
    for i, t in enumerate(np.asarray(times, dtype=np.float64)):
        t = float(t)
        active = [(ev, (t - ev.start) / max(ev.end - ev.start, 1e-6))
                  for ev in plan.events if ev.video and ev.start <= t < ev.end]
        base = [math.sin(2 * math.pi * f * t + p) for f, p in zip(nz["shake_f"], nz["shake_p"])]
        ev_shake = max((_event_shake(ev, tau) for ev, tau in active), default=0.0)
        dx = nz["shake"] * (base[0] + 0.6 * base[1]) + ev_shake * math.sin(2 * math.pi * 13.7 * t)
        dy = nz["shake"] * (base[2] + 0.6 * base[3]) + ev_shake * math.cos(2 * math.pi * 11.3 * t)
        sx = int(round(dx * width))
        sy = int(round(dy * height))
        img = bg[pad + sy:pad + sy + height, pad + sx:pad + sx + width].copy()
        # Objects move with the camera: shift them by the same whole pixels.
        c = _Canvas(img, -sx / width, -sy / height)
        ball = nz["ball"]
        if ball is not None and ball["t0"] <= t < ball["t1"]:
            u = (t - ball["t0"]) / max(ball["t1"] - ball["t0"], 1e-6)
            c.ellipse(ball["x0"] + (ball["x1"] - ball["x0"]) * u, ball["y0"] + (ball["y1"] - ball["y0"]) * u,
                      ball["r"] * height / width, ball["r"], ball["colour"])
        for ev, tau in active:
            _draw_event_video(c, ev, tau, t)
        light = nz["gain"] * (1.0 + nz["drift_a"] * math.sin(2 * math.pi * nz["drift_f"] * t + nz["drift_p"]))
        img *= cast * np.float32(light)
        img += bank[picks[i]]
        np.clip(img, 0.0, 255.0, out=img)
        yield img.astype(np.uint8)


# --------------------------------------------------------------------------- audio

def _fft_len(n: int) -> int:
    """A fast FFT length >= n (a power of two): prime lengths make pocketfft crawl."""
    return 1 << max(int(n - 1).bit_length(), 1)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, gain) -> np.ndarray:
    """Unit-RMS noise of ``n`` samples whose spectrum is white times ``gain(freqs)``."""
    if n == 0:
        return np.zeros(0, np.float32)
    m = _fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    spec *= gain(np.fft.rfftfreq(m, 1.0 / sr))
    x = np.fft.irfft(spec, m)[:n]
    return (x / (np.sqrt(np.mean(x * x)) + 1e-12)).astype(np.float32)


def _coloured_noise(rng: np.random.Generator, n: int, sr: int, beta: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**beta (f floored at 30 Hz)."""
    return _shaped_noise(rng, n, sr, lambda f: np.maximum(f, 30.0) ** (-beta / 2.0))


def _bandpass_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    return _shaped_noise(rng, n, sr, lambda f: ((f >= lo) & (f <= hi)).astype(np.float64))


def _harmonic(freq: np.ndarray, sr: int, amps) -> np.ndarray:
    """Sum of harmonics of an instantaneous frequency track (below 0.45 sr only)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    fmax = float(freq.max()) if freq.size else 0.0
    out = np.zeros_like(phase)
    for k, a in enumerate(amps, start=1):
        if k * fmax < 0.45 * sr:
            out += a * np.sin(k * phase)
    return out


def _env(t: np.ndarray, t0: float, t1: float, edge: float) -> np.ndarray:
    e = np.clip((t - t0) / edge, 0, 1) * np.clip((t1 - t) / edge, 0, 1)
    return e * e * (3 - 2 * e)


def _rms_norm(x: np.ndarray, target: float) -> np.ndarray:
    r = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return x * (target / r) if r > 0 else x


def _event_audio(ev: Event, sr: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """The event's sound over its window: ``n`` samples starting at ``ev.start``."""
    p = ev.params["a"]
    t = np.arange(n, dtype=np.float64) / sr
    L = n / sr
    if ev.audio == "cry":
        f = np.full(n, p["f0"])
        env = np.zeros(n)
        for b0, b1 in p["bursts"]:
            m = (t >= b0) & (t < b1)
            u = (t[m] - b0) / max(b1 - b0, 1e-6)
            f[m] = p["f0"] * (1.0 + 0.3 * np.sin(np.pi * u))
            env += _env(t, b0, b1, 0.04)
        f *= 1.0 + 0.035 * np.sin(2 * np.pi * p["vib_f"] * t)
        amps = [1.0, 0.8, 0.6, 0.45, 0.3, 0.2, 0.12, 0.08]
        x = _harmonic(f, sr, amps) * env
        return _rms_norm(x, 0.17 * p["gain"] * np.sqrt(max(env.mean(), 1e-3)))
    if ev.audio == "groan":
        f = np.full(n, p["f0"])
        env = np.zeros(n)
        for b0, b1 in p["bursts"]:
            m = (t >= b0) & (t < b1)
            u = (t[m] - b0) / max(b1 - b0, 1e-6)
            f[m] = p["f0"] * (1.08 - 0.2 * u)
            env += _env(t, b0, b1, 0.12) * (0.6 + 0.4 * np.sin(np.pi * np.clip((t - b0) / max(b1 - b0, 1e-6), 0, 1)))
        f *= 1.0 + 0.01 * np.sin(2 * np.pi * 3.0 * t)
        amps = [math.exp(-(k * p["f0"]) / 700.0) / k ** 0.3 for k in range(1, 25)]
        x = _harmonic(f, sr, amps) + 0.15 * _coloured_noise(rng, n, sr, 1.5)
        x = x * env
        return _rms_norm(x, 0.2 * p["gain"] * np.sqrt(max(env.mean(), 1e-3)))
    if ev.audio == "siren":
        f = p["fc"] + p["fd"] * np.sin(2 * np.pi * t / p["period"] + p["phase"])
        x = _harmonic(f, sr, [1.0, 0.0, 0.3, 0.0, 0.12])
        x *= 0.35 + 0.65 * np.sin(np.pi * np.clip(t / L, 0, 1)) ** 0.7  # approaching, passing
        x *= _env(t, 0, L, 0.1)
        return _rms_norm(x, 0.14 * p["gain"])
    if ev.audio == "thuds":
        x = np.zeros(n)
        for h0, hf, ha in p["hits"]:
            i0 = int(h0 * sr)
            m = min(n - i0, int(0.25 * sr))
            if m <= 0:
                continue
            tt = np.arange(m) / sr
            thump = np.sin(2 * np.pi * hf * tt * (1 - 0.3 * tt)) * np.exp(-tt / 0.07)
            click = rng.standard_normal(m) * np.exp(-tt / 0.012) * 0.6
            x[i0:i0 + m] += ha * (thump + click)
        shout = _bandpass_noise(rng, n, sr, 300.0, 1800.0) * 0.35
        senv = sum((_env(t, b0, b1, 0.05) for b0, b1 in p["shouts"]), np.zeros(n))
        x += shout * senv
        x *= _env(t, 0, L, 0.03)
        return (x * 0.45 * p["gain"]).astype(np.float64)
    if ev.audio == "bang":
        burst = _coloured_noise(rng, n, sr, 0.6) * np.exp(-t / p["decay"])
        boom = np.sin(2 * np.pi * p["boom_f"] * t * (1 - 0.15 * np.minimum(t, 1.0))) * np.exp(-t / 0.6)
        rumble = _coloured_noise(rng, n, sr, 2.0) * 0.25 * np.exp(-t / max(L, 0.3))
        x = (0.55 * burst + 0.7 * boom + rumble) * _env(t, 0, L, 0.005) * np.clip((L - t) / 0.05, 0, 1)
        return x * 0.9 * p["gain"]
    if ev.audio == "sweep":
        u = np.clip(t / L, 0, 1)
        f = p["f0"] * (1 + (p["rise"] - 1) * u)
        engine = _harmonic(f, sr, [1.0, 0.7, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])
        whoosh = _coloured_noise(rng, n, sr, 1.0)
        x = (0.6 * engine + 0.5 * whoosh) * (0.25 + 0.75 * u ** 1.5) * _env(t, 0, L, 0.06)
        return _rms_norm(x, 0.2 * p["gain"])
    raise ValueError(f"unknown audio pattern {ev.audio!r}")


def render_audio(plan: ClipPlan, sample_rate: int, channels: int) -> np.ndarray:
    """The clip's sound, float32 ``[channels, round(duration * sample_rate)]`` in [-1, 1]."""
    sr = sample_rate
    n = int(round(plan.duration * sr))
    nz, sc = plan.nuisance, plan.scene
    rng = np.random.default_rng(list(plan.noise_seed) + [2])
    amb_level = sc.amb_level * nz["amb"]
    hum = _harmonic(np.full(n, sc.hum_freq), sr, sc.hum_amps)
    out = np.zeros((channels, n), dtype=np.float64)
    out[:] = amb_level * _coloured_noise(rng, n, sr, sc.noise_beta)
    if channels > 1:  # partly correlated channels
        out[1] = 0.6 * out[1] + 0.8 * amb_level * _coloured_noise(rng, n, sr, sc.noise_beta)
    out += amb_level * 0.6 * hum
    for c0, cf, cd, ca in nz["chirps"]:
        i0, m = int(c0 * sr), int(cd * sr)
        m = max(min(m, n - i0), 0)
        if m:
            tt = np.arange(m) / sr
            ch = ca * np.sin(2 * np.pi * cf * tt * (1 + 0.3 * tt / cd)) * np.sin(np.pi * tt / cd) ** 2
            out[:, i0:i0 + m] += ch
    for ev in plan.events:
        if ev.audio is None:
            continue
        i0, i1 = int(round(ev.start * sr)), min(int(round(ev.end * sr)), n)
        if i1 <= i0:
            continue
        x = _event_audio(ev, sr, i1 - i0, rng)
        pan = ev.params["a"]["pan"]
        if channels == 1:
            out[0, i0:i1] += x
        else:
            ang = (pan + 1) * math.pi / 4
            out[0, i0:i1] += x * math.cos(ang) * math.sqrt(2)
            out[1, i0:i1] += x * math.sin(ang) * math.sqrt(2)
    out *= nz["audio_gain"]
    # Soft limiter above 0.8 keeps the bangs in range without touching quieter content.
    mag = np.abs(out)
    over = mag > 0.8
    out[over] = np.sign(out[over]) * (0.8 + 0.19 * np.tanh((mag[over] - 0.8) / 0.19))
    return out.astype(np.float32)
