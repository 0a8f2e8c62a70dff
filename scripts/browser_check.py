"""Check the prompt explorer in a real browser: JupyterLab on 127.0.0.1, headless Chromium.

    apt-get install chromium          # Debian's Chromium (or pass --chromium PATH)
    pip install playwright            # only the Python driver; no browser download is needed
    python scripts/browser_check.py --out browser_check/

It serves a copy of ``notebooks/06_interactive_explorer.ipynb`` (JupyterLab saves what it runs;
the committed notebook stays without outputs) with JupyterLab on a free local port, opens it, runs
all cells (the real kernel, the real widget front end) and waits until the notebook has finished.
Then, as a student would:

1. the four panels' images start at the same height (screenshot ``explorer_widget.png``);
2. a click on the first panel (a real mouse event through ipyevents to the kernel) comes back in
   the read-out as a hand-made point where it was clicked (``explorer_after_click.png``);
3. an emptied prompt box and the *segment* button: the read-out refuses the empty prompt and the
   box shows the prompt in force again (``explorer_empty_prompt.png``);
4. the *compare prompts* tab shows the comparison the notebook ran: each prompt of the notebook's
   printed table has a column with the same sensitivity, the prompts under 0.1 (there must be
   one) are flagged "barely depends on the prompt" and no other is (``explorer_compare.png``).

Exit status 0 when all of it happened; 1, with ``browser check FAILED: ...`` and ``failure.png``,
when the explorer did something else. Not part of the test suite: CI has no browser, and this
needs a few minutes.
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
    """Open the notebook, run it, then check the explorer the way a student uses it."""
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
    _check_panels_line_up(widget)
    _check_click(page, widget, panel)
    widget.screenshot(path=str(out / "explorer_after_click.png"))
    _check_empty_prompt(widget)
    widget.screenshot(path=str(out / "explorer_empty_prompt.png"))
    # the second tab shows the comparison the notebook ran, with each prompt's sensitivity
    widget.locator(".lm-TabBar-tab", has_text="compare prompts").first.click()
    _check_flags(page, widget)
    widget.screenshot(path=str(out / "explorer_compare.png"))
    return True


def _check_panels_line_up(widget) -> None:
    """The four panels' images start at the same height (a title that wraps pushes its image down)."""
    boxes = [widget.locator(".widget-image").nth(i).bounding_box() for i in range(4)]
    tops = [round(b["y"]) for b in boxes]
    print(f"the four panels' images start at y = {tops}")
    if max(tops) - min(tops) > 1:
        raise AssertionError(f"the panels' images do not line up: their tops are at {tops}")


def _check_click(page, widget, panel) -> None:
    """A real click, 30 % across and 40 % down the first panel (256 px phantom image), goes
    through ipyevents to the kernel and comes back as a hand-made point in the read-out."""
    box = panel.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    x, y = round(0.3 * 256), round(0.4 * 256)
    readout = widget.locator(".widget-html-content", has_text="hand-made SAM prompts").first
    readout.wait_for(timeout=60_000)
    text = readout.inner_text()
    print(f"after the click the read-out says: {text!r} (expected a point near +({x}, {y}))")
    got = re.search(r"\+\((\d+), (\d+)\)", text)
    if not got or abs(int(got[1]) - x) > 3 or abs(int(got[2]) - y) > 3:
        raise AssertionError(f"the click did not add a point near ({x}, {y}): {text!r}")


def _check_empty_prompt(widget) -> None:
    """Blank the prompt box and press the *segment* button beside it: the read-out refuses the
    empty prompt and the box shows the prompt in force again."""
    box = widget.locator(".widget-text:has(label:text-is('prompt')) input").first
    before = box.input_value()
    box.fill("   ")
    widget.locator("button", has_text="segment").first.click()
    # the read-out (the status line above the panels says it too, without what is still shown)
    refusal = widget.locator(".widget-html-content", has_text="the panels still show").first
    refusal.wait_for(timeout=60_000)
    text = refusal.inner_text()
    print(f"after an empty prompt and 'segment' the read-out says: {text!r}")
    if "refused" not in text or f"still show '{before}'" not in text:
        raise AssertionError(f"the empty prompt was not refused with {before!r} kept: {text!r}")
    t0 = time.time()
    while box.input_value() != before and time.time() - t0 < 30:
        time.sleep(0.2)
    if box.input_value() != before:
        raise AssertionError(f"the prompt box shows {box.input_value()!r}, not the prompt in force {before!r}")


def _notebook_table(page) -> dict[str, float | None]:
    """The sensitivity of each prompt in the comparison table the notebook printed."""
    table = page.locator(".jp-OutputArea-output", has_text=re.compile(r"prompt\s+Dice\s+sensitivity"))
    rows = {}
    for line in table.first.inner_text().splitlines()[1:]:
        got = re.match(r"^(.+?)\s+(-|\d+\.\d+)\s+(-|\d+\.\d+)\s*$", line)
        if got:
            rows[got[1]] = None if got[3] == "-" else float(got[3])
    return rows


def _check_flags(page, widget) -> None:
    """Each prompt whose sensitivity in the notebook's table is under the threshold (0.1) has its
    column flagged "barely depends on the prompt"; no other column is. The notebook's comparison
    must have such a prompt (on the offline phantom breast image: "benign breast lesion")."""
    from medclipsam.saliency.sensitivity import DEFAULT_THRESHOLD

    table = _notebook_table(page)
    print(f"the notebook's table: {table}")
    low = [p for p, s in table.items() if s is not None and s < DEFAULT_THRESHOLD]
    if not low:
        raise AssertionError(f"no prompt of the notebook's table is under {DEFAULT_THRESHOLD}: nothing "
                             f"to see flagged in the compare tab ({table})")
    captions = widget.locator(".widget-html-content:has(b)", has_text="sensitivity")
    captions.first.wait_for(timeout=30_000)
    columns, tops = {}, []
    for i in range(captions.count()):
        c = captions.nth(i)
        columns[c.locator("b").first.inner_text().strip()] = c.inner_text()
        # the column (caption, map, mask ...): .widget-html-content < .widget-html < .widget-vbox
        tops.append(round(c.locator("xpath=../..").locator(".widget-image").first.bounding_box()["y"]))
    print(f"the compare tab's maps start at y = {tops}")
    if max(tops) - min(tops) > 1:
        raise AssertionError(f"the compare tab's columns do not line up: their maps start at {tops}")
    for prompt, s in table.items():
        if prompt not in columns:
            raise AssertionError(f"the compare tab has no column for {prompt!r}: {list(columns)}")
        text = " ".join(columns[prompt].split())
        flagged = "barely depends on the prompt" in text
        print(f"  {prompt!r}: sensitivity {s} in the table; its column: {text!r}")
        if s is not None and f"sensitivity {s:.2f}" not in text:
            raise AssertionError(f"{prompt!r}: the column does not show the table's sensitivity {s:.2f}: {text!r}")
        if s is None or abs(s - DEFAULT_THRESHOLD) < 0.005:  # no number, or too close to call
            continue
        if flagged != (s < DEFAULT_THRESHOLD):
            raise AssertionError(
                f"the compare tab {'flags' if flagged else 'does not flag'} {prompt!r} (sensitivity {s:.2f}, "
                f"threshold {DEFAULT_THRESHOLD}): its column says {text!r}")
    print(f"the compare tab flags {low} as barely depending on the prompt, and no other prompt")


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
            except AssertionError as e:  # the explorer did not do what a student expects
                page.screenshot(path=str(out / "failure.png"), full_page=True)
                print(f"browser check FAILED: {e}", file=sys.stderr)
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
    print("browser check passed" if ok else "browser check FAILED (see above; failure.png)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
