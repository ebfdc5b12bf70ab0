#!/usr/bin/env bash
# tools/gpu_check.sh: the README's GPU figures in one run (under 8 minutes on one H100).
#
# On a GPU machine, from a fresh clone with the venv built (make install):
#     tools/gpu_check.sh                  # writes reports/bench/gpu.json
#     OUT=/tmp/gpu.json CLIPS=20 tools/gpu_check.sh
# Runs `cli.py bench extract --throughput-only` on CLIPS (100) generated 10 s 720p H.264
# clips for the paper's backbones (random: MobileViT-S + wav2vec2-base, untrained) and the
# lite ones (EfficientNet-Lite0 + YAMNet; needs the lite extra and $AVAR_YAMNET), each with
# --decode sw and --decode cuda, in fp32 and bf16: decode-only, backbone-only and
# end-to-end clips/s per row; then `cli.py bench live --gpu-only` (paper and tiny backbones,
# then lite). One row failing (e.g.
# lite not installed) is recorded with its error; the others still run. Rows past the
# time budget (BUDGET_S, 420) are recorded as skipped.
# Without a CUDA GPU it refuses at once: one line on stderr, exit 3, nothing run or written.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-reports/bench/gpu.json}
CLIPS=${CLIPS:-100}
BUDGET_S=${BUDGET_S:-420}
WORKERS=${WORKERS:-$(nproc)}

if [ ! -x "$PY" ]; then
    echo "gpu_check: no Python at $PY: build the venv first (make install), or set PY=" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is false): run it on a GPU machine" >&2
    exit 3
fi

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

row() {  # row NAME ARGS...: one bench run; its JSON, or its error, or that the budget ran out
    local name=$1
    shift
    if (( SECONDS - START > BUDGET_S )); then
        echo "skipped: the ${BUDGET_S} s budget was spent before this row" > "$WORK/$name.err"
        return
    fi
    echo "gpu_check: $name" >&2
    if ! "$PY" cli.py bench "$@" --out "$WORK/$name.json" > /dev/null 2> "$WORK/$name.log"; then
        tail -n 3 "$WORK/$name.log" > "$WORK/$name.err"
        rm -f "$WORK/$name.json"
    fi
}

for preset in random lite; do
    case $preset in
        random) models=(--video-model random --audio-model random) ;;
        lite) models=(--video-model efficientnet_lite0 --audio-model yamnet) ;;
    esac
    for decode in sw cuda; do
        for precision in fp32 bf16; do
            row "extract_${preset}_${decode}_${precision}" extract --throughput-only --clips "$CLIPS" \
                --clips-dir "$WORK/clips" "${models[@]}" --device cuda --precision "$precision" \
                --decode "$decode" --workers "$WORKERS" --batch-size 32
        done
    done
done
row live live --gpu-only --full-seconds 12 --tiny-seconds 12
row live_lite live --gpu-only --backbones lite --no-full --tiny-seconds 4

"$PY" - "$WORK" "$OUT" "$((SECONDS - START))" <<'PYEOF'
"""Merge the rows into one JSON, written atomically (temp name + rename)."""
import json
import sys
from pathlib import Path

from cache_schema.atomic import write_json

work, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = {}
for p in sorted(work.glob("*.json")):
    rows[p.stem] = json.loads(p.read_text())
for p in sorted(work.glob("*.err")):
    rows[p.stem] = {"error": p.read_text().strip()}
out.parent.mkdir(parents=True, exist_ok=True)
write_json(out, {"tool": "tools/gpu_check.sh", "wall_s": wall, "rows": rows}, indent=2)
ok = sum("error" not in r for r in rows.values())
print(f"gpu_check: {ok} of {len(rows)} rows measured in {wall} s -> {out}")
PYEOF
