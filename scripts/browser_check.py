"""Check the prompt explorer in a real browser: JupyterLab on 127.0.0.1, headless Chromium.

    apt-get install chromium          # Debian's Chromium (or pass --chromium PATH)
    pip install playwright            # only the Python driver; no browser download is needed
    python scripts/browser_check.py --out browser_check/

It serves a copy of ``notebooks/06_interactive_explorer.ipynb`` (JupyterLab saves what it runs;
the committed notebook stays without outputs) with JupyterLab on a free local port, opens it, runs
all cells (the real kernel, the real widget
front end), waits until the explorer has drawn its panels, takes a screenshot, then clicks on the
explorer's first panel (a real mouse event through ipyevents to the kernel) and waits until the
read-out says a hand-made point was added, and takes a second screenshot; then opens the
"compare prompts" tab and waits for the notebook's comparison (with a prompt flagged as barely
changing the map) and takes a third. Exit status 0 when all of it happened. Not part of the test suite: CI has no browser, and this needs a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/06_interactive_explorer.ipynb"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def _drive(page, base: str, token: str, out: Path, timeout: float) -> bool:
    """Open the notebook, run it, wait for the explorer, screenshot, click, screenshot."""
    page.goto(f"{base}/lab/tree/{Path(NOTEBOOK).name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    select = page.locator(".jp-Dialog button", has_text="Select")
    try:  # JupyterLab may ask which kernel to start: the notebook's own (Python 3)
        select.first.click(timeout=15_000)
    except Exception:  # noqa: BLE001 - no dialog: the kernel started by itself
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    t0 = time.time()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=30_000)
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=30_000)
    page.locator(".widget-tab >> text=SAM score").first.wait_for(timeout=timeout * 1000)
    print(f"explorer drawn {time.time() - t0:.1f} s after Run All")
    # let the notebook's own walk-through finish, so that what follows is the browser's doing:
    # every code cell has an execution count and none is running ([*])
    page.wait_for_function(
        r"""() => {
            const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                .map(e => e.textContent);
            return p.length > 0 && p.every(t => /\[\d+\]/.test(t));
        }""", timeout=timeout * 1000)
    print(f"notebook finished {time.time() - t0:.1f} s after Run All")
    page.screenshot(path=str(out / "notebook_end.png"), full_page=True)
    widget = page.locator(".widget-tab").first
    panel = widget.locator(".widget-image").first
    panel.scroll_into_view_if_needed()
    widget.screenshot(path=str(out / "explorer_widget.png"))
    # a real click, 30 % across and 40 % down the first panel (256 px phantom image)
    box = panel.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    x, y = round(0.3 * 256), round(0.4 * 256)
    page.locator(".widget-tab >> text=hand-made prompts").first.wait_for(timeout=60_000)
    readout = widget.locator("text=hand-made prompts").first.inner_text()
    print(f"after the click the read-out says: {readout!r} (expected a point near +({x}, {y}))")
    got = re.search(r"\+\((\d+), (\d+)\)", readout)
    if not got or abs(int(got[1]) - x) > 3 or abs(int(got[2]) - y) > 3:
        raise AssertionError(f"the click did not add a point near ({x}, {y}): {readout!r}")
    widget.screenshot(path=str(out / "explorer_after_click.png"))
    # the second tab shows the comparison the notebook ran, with each prompt's sensitivity
    widget.locator(".lm-TabBar-tab", has_text="compare prompts").first.click()
    widget.locator("text=barely depends on the prompt").first.wait_for(timeout=30_000)
    print("the compare tab shows the prompts side by side, flagging the prompt-insensitive one")
    widget.screenshot(path=str(out / "explorer_compare.png"))
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="browser_check", help="folder for screenshots and the log")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the widget")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # JupyterLab saves what it runs: serve a copy, never the committed notebook
    lab_root = out / "lab"
    lab_root.mkdir(exist_ok=True)
    shutil.copy2(ROOT / NOTEBOOK, lab_root / Path(NOTEBOOK).name)
    port, token = _free_port(), secrets.token_hex(16)
    # JupyterLab settings for this run: every cell kept in the page (no windowing), no news
    settings = out / "lab-settings"
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDCLIPSAM_OFFLINE="1",
               JUPYTERLAB_SETTINGS_DIR=str(settings.resolve()))
    log = open(out / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={lab_root.resolve()}", "--allow-root",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    ok = False
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", 60)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            try:
                ok = _drive(page, base, token, out, a.timeout)
            except Exception:
                page.screenshot(path=str(out / "failure.png"), full_page=True)
                raise
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print("screenshots in", out.resolve())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
