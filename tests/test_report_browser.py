"""The report as a person sees it: rendered by headless Chromium from ``file://``.

Chromium (Debian package ``chromium``) is installed by the session fixture when it
is missing and we are root with apt-get (measured: about 20 s on the build
machine with a warm mirror). The test skips, with the reason, only when Chromium
cannot be installed or cannot start at all.

``docs/img/report.png`` is a screenshot of a real demo report, not of this fixture
(``bash scripts/report_screenshot.sh`` after ``make demo``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from mapo.report import build_report
from test_report import INJECTED, make_eval_dir, parse_dom

WINDOW = (1280, 1500)
_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--virtual-time-budget=3000",  # let the load event and our script finish before dumping
]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _install_chromium() -> str:
    """Install Debian's chromium; return why not when it cannot be done."""
    if os.geteuid() != 0:
        return "chromium is not installed and we are not root (install it: apt-get install chromium)"
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
            env=env, check=True, capture_output=True, timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        tail = (getattr(e, "stderr", b"") or b"").decode(errors="replace")[-400:]
        return f"installing chromium failed: {e}; {tail}"
    return ""


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> str:
    binary = _find_chromium()
    if binary is None:
        why = _install_chromium()
        binary = _find_chromium()
        if binary is None:
            pytest.skip(f"headless Chromium unavailable: {why or 'installed but not on PATH'}")
    probe = subprocess.run(
        [binary, *_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-probe')}", "--dump-dom", "about:blank"],
        capture_output=True, text=True, timeout=120,
    )
    if "<html" not in probe.stdout:
        pytest.skip(f"headless Chromium cannot start here: rc={probe.returncode} {probe.stderr[-400:]}")
    return binary


def _browse(chromium: str, url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run(
        [chromium, *_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=120,
    )


def test_report_in_headless_chromium(chromium, tmp_path):
    src = make_eval_dir(tmp_path / "eval", n=6)
    index = build_report(src, tmp_path / "report")
    url = index.resolve().as_uri()

    dom_text = _browse(chromium, url, tmp_path, "--dump-dom").stdout
    dom = parse_dom(dom_text)
    # What a person sees: six trajectories, and every image on the page actually loaded
    # (our script counts <img> with naturalWidth > 0 after the load event).
    assert dom.cards == 6
    assert dom.body_attrs.get("data-images") == "15"  # 6 thumbnails + 6 crops + 3 plots
    assert dom.body_attrs.get("data-images-broken") == "0"
    # The injected <script> and <img onerror> in sample 0's description did not run:
    # no element it would create, no attribute it would set, title untouched; the text is shown.
    assert "pwned" not in dom.ids
    assert "data-pwned" not in dom.body_attrs
    assert dom.title == "mapo report: eval"
    assert INJECTED in "".join(dom.text)
    assert dom_text.count('class="card hidden"') == 0
    # The filters work in the browser: links with preset filters (read from the URL hash).
    for fragment, visible in [("outcome=incorrect", 3), ("outcome=incorrect&q=square%20%235", 1), ("invalid=1", 1)]:
        text = _browse(chromium, f"{url}#{fragment}", tmp_path, "--dump-dom").stdout
        assert text.count('class="card hidden"') == 6 - visible, fragment
        assert f'<b id="f-shown">{visible}</b>' in text, fragment

    shot = tmp_path / "shot.png"
    proc = _browse(chromium, url, tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert shot.is_file(), proc.stderr[-800:]
    img = Image.open(shot).convert("RGB")
    assert img.size == WINDOW
    colours = img.resize((64, 64)).getcolors(64 * 64)
    assert colours is not None and len(colours) > 20, "the screenshot looks blank"
