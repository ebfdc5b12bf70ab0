"""Heard, seen or both: which modality an anomaly needed, from scores with one masked.

For a run that reads video and audio, the head is run twice more with one modality
masked out, as a clip without that stream is presented to it (``Predictor.
score_with_evidence``): the *audio evidence* is the score with the video masked, the
*video evidence* the score with the audio masked. The rule, at the step that matters (an
alert's peak step; a file's peak step), against the threshold the alert used:

* ``heard``: the audio evidence alone reaches the threshold, the video evidence does not;
* ``seen``: the video evidence alone reaches it, the audio evidence does not;
* ``both``: each alone reaches it (either would have raised the alert), or neither does
  (only the two together do).

Why an absolute rule, against the threshold, and not "whichever is larger": the question
an operator asks is "would this alert have fired on the sound alone / the picture
alone?". A relative rule would call an alert ``heard`` because the audio evidence was
0.99 and the video's 0.97, although the picture alone raised it too. Masked scores are
counterfactuals, not contributions: early fusion is not additive, so the two never sum
to the fused score, and "neither alone" is a genuine answer (an interaction), reported as
``both``. A step with no audio at all (a camera without a microphone) has no audio
evidence (None), which counts as not reaching the threshold: such alerts are ``seen``.
"""

from __future__ import annotations

import math

__all__ = ["BOTH", "HEARD", "SEEN", "TRIGGERS", "trigger_of"]

HEARD, SEEN, BOTH = "heard", "seen", "both"
TRIGGERS = (HEARD, SEEN, BOTH)


def _reaches(score: float | None, threshold: float) -> bool:
    return score is not None and math.isfinite(score) and score >= threshold


def trigger_of(audio: float | None, video: float | None, threshold: float) -> str | None:
    """``heard``/``seen``/``both`` from the audio evidence (video masked) and the video
    evidence (audio masked) of one step (see the module docstring); None when there is no
    evidence at all (a run that reads one modality)."""
    if audio is None and video is None:
        return None
    heard, seen = _reaches(audio, threshold), _reaches(video, threshold)
    if heard and not seen:
        return HEARD
    if seen and not heard:
        return SEEN
    return BOTH
