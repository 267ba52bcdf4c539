#!/usr/bin/env bash
# docs/img/report.png: a screenshot of a real report page, as headless Chromium renders it.
# Usage: bash scripts/report_screenshot.sh [REPORT_DIR]   (default runs/demo/report, written by `make demo`)
# Needs chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-runs/demo/report}
[ -f "$REPORT/index.html" ] || { echo "no $REPORT/index.html: run make demo first" >&2; exit 2; }
TMP=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
  --virtual-time-budget=3000 --window-size=1280,1500 --screenshot="$TMP/shot.png" \
  "file://$(realpath "$REPORT/index.html")" >/dev/null 2>&1
.venv/bin/python - "$TMP/shot.png" docs/img/report.png <<'PY'
import sys
from PIL import Image
# A palette PNG keeps the docs image small without visible loss on a UI screenshot.
Image.open(sys.argv[1]).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
print(f"wrote {sys.argv[2]}")
PY
rm -rf "$TMP"
