"""Reusable Playwright helpers for driving the Streamlit app in tests/e2e.

All timeouts here are in **seconds** (Playwright's own API uses milliseconds).

Streamlit DOM (read off 1.67.0, the version installed here; the ``data-testid`` names below are the ones
Streamlit's own e2e tests use and have been stable through 1.5x-1.6x):
- ``[data-testid="stApp"]`` carries ``data-test-script-state`` (``initial``, ``running``, ``rerunRequested``,
  ``notRunning``, ``stopRequested``, ``compilationError``) and ``data-test-connection-state`` (``CONNECTED``...):
  the reliable run signal. ``[data-testid="stStatusWidget"]`` ("Running...") is mounted only while the
  status corner shows something and did not show at all in runs here, so it is only a secondary check.
- Elements left over from the previous run carry ``data-stale="true"`` until the run replaces them.
- Sliders: ``[data-testid="stSlider"]`` with a ``[data-testid="stWidgetLabel"]``. In 1.67 the thumb is
  react-aria's visually hidden ``input[type="range"]`` (value in ``.value``, formatted value in
  ``aria-valuetext``, no ``aria-valuenow``); older releases used BaseWeb's ``div[role="slider"]`` with
  ``aria-valuenow``. This module handles both. Every key press on a thumb is a committed change (a rerun).
- Buttons: ``[data-testid="stButton"]`` / ``stDownloadButton`` / ``stFormSubmitButton`` wrap a
  ``<button data-testid="stBaseButton-<kind>">`` whose label is a ``<p>`` in ``stMarkdownContainer``.
- Expanders: ``[data-testid="stExpander"] > details > summary`` (the summary's text starts with the icon's
  ligature name, e.g. "keyboard_arrow_down"); the body is ``[data-testid="stExpanderDetails"]``.
- Navigation links: ``[data-testid="stSidebarNavLink"]`` (``stTopNavLink`` with ``position="top"``); their text
  is the icon followed by the title.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

APP = '[data-testid="stApp"]'
MAIN = '[data-testid="stMainBlockContainer"]'
STATUS = '[data-testid="stStatusWidget"]'
EXCEPTION = '[data-testid="stException"]'
SLIDER_THUMB = 'input[type="range"], [role="slider"]'

# Installed in every page before its scripts run (see ``install_idle_probe``): the time of the last DOM
# change, so that "idle" also means "nothing has been added or removed for a while". Streamlit marks the
# script finished a second or more before a page with many elements has finished rendering them.
INIT_SCRIPT = """(() => {
  window.__e2eLastMutation = performance.now();
  const start = () => new MutationObserver(() => { window.__e2eLastMutation = performance.now(); })
    .observe(document, {childList: true, subtree: true, characterData: true});
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();"""

# True when the app is connected, the script is not running, no status ("Running...") or spinner is shown,
# nothing on the page is stale (left from the previous run), the main block has rendered and the DOM has
# not changed for ``quietMs``.
_IDLE_JS = """(quietMs) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return false;
  const run = app.getAttribute('data-test-script-state');
  const conn = app.getAttribute('data-test-connection-state');
  if (run !== null && run !== 'notRunning') return false;
  if (conn !== null && conn !== 'CONNECTED') return false;
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  if (status && /Running|Connecting|Stopping/i.test(status.textContent || '')) return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  if (!document.querySelector('[data-testid="stMainBlockContainer"]')) return false;
  const last = window.__e2eLastMutation;
  return last === undefined || performance.now() - last >= quietMs;
}"""


def install_idle_probe(context_or_page) -> None:
    """Add :data:`INIT_SCRIPT` to a Playwright BrowserContext or Page (the ``browser_page`` fixture does)."""
    context_or_page.add_init_script(INIT_SCRIPT)


_STATE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  return {script: app && app.getAttribute('data-test-script-state'),
          connection: app && app.getAttribute('data-test-connection-state'),
          status: status && status.textContent,
          spinner: !!document.querySelector('[data-testid="stSpinner"]'),
          stale: document.querySelectorAll('[data-stale="true"]').length,
          main: !!document.querySelector('[data-testid="stMainBlockContainer"]')};
}"""


def app_state(page) -> dict | str:
    """What the app shows of its state (script, connection, status, spinner, stale elements), for errors."""
    try:
        return page.evaluate(_STATE_JS)
    except Exception as error:  # noqa: BLE001 - the page is navigating
        return repr(error)


def wait_for_app_idle(page, timeout: float = 120.0, settle: float = 0.75) -> None:
    """Wait until the Streamlit script has finished its run and the page has settled.

    The idle condition (script ``notRunning``, connected, no spinner, nothing stale, main block present,
    no DOM change for ``settle`` s) must also hold for ``settle`` seconds in a row here: a widget change
    reaches the server a moment after the key press, and a rerun can follow a rerun. A page that keeps
    changing (an ``st.fragment(run_every=...)`` or a progress bar polling a job) is never idle.
    Raises ``TimeoutError`` with the page's state after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    idle_since = None
    while True:
        now = time.monotonic()
        try:
            idle = bool(page.evaluate(_IDLE_JS, settle * 1000))
        except Exception:  # the page is navigating: its context was destroyed mid-evaluation
            idle = False
        if idle:
            idle_since = idle_since or now
            if now - idle_since >= settle:
                return
        else:
            idle_since = None
        if now > deadline:
            raise TimeoutError(f"Streamlit app not idle after {timeout:.0f} s: {app_state(page)}")
        page.wait_for_timeout(100)


def wait_for_images(page, timeout: float = 30.0) -> None:
    """Wait until every <img> on the page has finished loading (st.image sources load after the run)."""
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=timeout * 1000)


def exceptions(page) -> list[str]:
    """Texts of the ``st.exception`` / uncaught-error boxes on the page (empty when none)."""
    return [text.strip() for text in page.locator(EXCEPTION).all_inner_texts()]


def goto_page(page, base_url: str, url_path: str = "", title: str | None = None, timeout: float = 120.0) -> bool:
    """Open an app page the way a user would and wait for it to be idle. Returns True if a link was clicked.

    With ``title``, click the sidebar (or top-bar) navigation link whose label is that text (the icon
    beside it does not matter): this keeps the Streamlit session (``st.session_state``, the current run).
    Otherwise, or when no such link exists (the app is not loaded yet, or ``st.navigation`` shows no menu
    because there is one page), load ``base_url/url_path``, which starts a new session.
    """
    if title is not None and page.url.startswith(base_url):
        links = page.locator('[data-testid="stSidebarNavLink"], [data-testid="stTopNavLink"]').filter(
            has=page.get_by_text(title, exact=True))
        if links.count() > 0:
            links.first.click()
            page.wait_for_url(re.compile(rf"/{re.escape(url_path.strip('/'))}/?(\?.*)?$"), timeout=timeout * 1000)
            wait_for_app_idle(page, timeout)
            return True
    page.goto(f"{base_url.rstrip('/')}/{url_path.lstrip('/')}", timeout=timeout * 1000)
    wait_for_app_idle(page, timeout)
    return False


def button(page, label: str, testid: str = "stButton"):
    """The ``<button>`` of the Streamlit button (``stButton``; ``stDownloadButton``, ``stFormSubmitButton``,
    ``stLinkButton``) whose text is exactly ``label``. Inside, the button itself is
    ``[data-testid="stBaseButton-<kind>"]`` (``secondary``, ``primary``, ``tertiary``...)."""
    return page.locator(f'[data-testid="{testid}"]').filter(has=page.get_by_text(label, exact=True)).locator(
        "button, a").first


def click_button(page, label: str, timeout: float = 120.0) -> None:
    """Click the ``st.button`` labelled ``label`` and wait for the rerun it starts."""
    target = button(page, label)
    reveal(page, target)
    target.click()
    wait_for_app_idle(page, timeout)


def download(page, label: str, folder: str | os.PathLike, timeout: float = 120.0) -> Path:
    """Click the ``st.download_button`` labelled ``label``; save the file under ``folder`` and return its path.

    Needs a context with ``accept_downloads=True`` (``browser_page`` has it). The name is the one the app
    suggests. A download button also reruns the script unless it was made with ``on_click="ignore"``.
    """
    target = button(page, label, "stDownloadButton")
    reveal(page, target)
    with page.expect_download(timeout=timeout * 1000) as info:
        target.click()
    item = info.value
    path = Path(folder) / item.suggested_filename
    path.parent.mkdir(parents=True, exist_ok=True)
    item.save_as(path)
    wait_for_app_idle(page, timeout)
    return path


def widget(page, testid: str, label: str):
    """The Streamlit widget ``[data-testid=testid]`` (``stSlider``, ``stSelectbox``, ``stNumberInput``,
    ``stMultiSelect``, ``stCheckbox``, ``stRadio``...) whose label, as rendered, is exactly ``label``."""
    return page.locator(f'[data-testid="{testid}"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]').filter(has=page.get_by_text(label, exact=True)))


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the ``st.selectbox`` labelled ``label`` as a person does: open it, click the option."""
    box = widget(page, "stSelectbox", label)
    box.click()
    page.locator('[role="option"]').filter(has=page.get_by_text(option, exact=True)).first.click()
    wait_for_app_idle(page)


def open_expander(page, label: str) -> None:
    """Expand the ``st.expander`` whose summary reads ``label`` (no-op when it is open)."""
    expander = page.locator('[data-testid="stExpander"]').filter(
        has=page.locator("summary").filter(has=page.get_by_text(label, exact=True)))
    details = expander.first.locator("details")
    if details.get_attribute("open") is None:
        details.locator("summary").first.click()
        details.locator('[data-testid="stExpanderDetails"]').wait_for(state="visible")


def reveal(page, locator) -> None:
    """Make a widget interactable: open the collapsed expander that holds it, then scroll it into view."""
    if not locator.is_visible():
        expanders = page.locator('[data-testid="stExpander"]').filter(has=locator)
        if expanders.count():
            expanders.last.locator("summary").first.click()
            locator.wait_for(state="visible")
    locator.scroll_into_view_if_needed()


def _thumb_value(thumb) -> tuple[str, str]:
    """(numeric value, displayed text) of a slider thumb, BaseWeb div or react-aria input."""
    return tuple(thumb.evaluate(
        """el => [el.tagName === 'INPUT' ? el.value : (el.getAttribute('aria-valuenow') || ''),
                  el.getAttribute('aria-valuetext') || el.getAttribute('aria-valuenow') || el.value || '']"""))


def slider_value(page, label: str) -> list[str]:
    """Displayed value of each thumb of the slider labelled ``label`` (one for a plain slider)."""
    thumbs = widget(page, "stSlider", label).locator(SLIDER_THUMB)
    return [_thumb_value(thumbs.nth(i))[1] for i in range(thumbs.count())]


def _matches(current: tuple[str, str], target) -> bool:
    number, text = current
    if isinstance(target, str):  # select_slider option label (or a formatted value)
        return text.strip() == target.strip()
    try:
        return abs(float(number) - float(target)) <= 1e-6 * max(1.0, abs(float(target)))
    except ValueError:
        return False


def set_slider(page, label: str, value, timeout: float = 120.0, max_presses: int = 400) -> None:
    """Move the slider labelled ``label`` to ``value`` with the keyboard, then wait for the rerun.

    ``value``: a number for ``st.slider`` (compared with the thumb's numeric value), a string for
    ``st.select_slider`` (the option label shown, ``aria-valuetext``; the numeric value there is the
    option's index), or a pair of those for a range slider. The thumb is focused and ArrowLeft/ArrowRight
    (Home first for a select_slider) are pressed until it shows the value; every key press is a committed
    change, i.e. a rerun request, which is why :func:`wait_for_app_idle` waits for the page to settle.
    """
    targets = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    slider = widget(page, "stSlider", label)
    if slider.count() != 1:
        raise AssertionError(f"expected one slider labelled {label!r}, found {slider.count()}")
    reveal(page, slider)
    thumbs = slider.locator(SLIDER_THUMB)
    if thumbs.count() != len(targets):
        raise AssertionError(f"slider {label!r} has {thumbs.count()} thumb(s), got {len(targets)} value(s)")
    order = list(range(len(targets)))
    if len(targets) == 2 and not isinstance(targets[0], str) and float(targets[0]) > float(_thumb_value(thumbs.nth(0))[0]):
        order.reverse()  # moving the start thumb up: move the end thumb first so it does not block it
    for i in order:
        thumb, target = thumbs.nth(i), targets[i]
        thumb.focus()
        current = _thumb_value(thumb)
        if isinstance(target, str) and not _matches(current, target):
            thumb.press("Home")
        for _ in range(max_presses):
            current = _thumb_value(thumb)
            if _matches(current, target):
                break
            if isinstance(target, str):
                key = "ArrowRight"
            else:
                key = "ArrowRight" if float(current[0]) < float(target) else "ArrowLeft"
            thumb.press(key)
            if _thumb_value(thumb) == current:
                page.wait_for_timeout(200)  # give React a moment before calling it stuck
            if _thumb_value(thumb) == current:
                raise AssertionError(f"slider {label!r} stuck at {current[1]!r} short of {target!r}")
        else:
            raise AssertionError(f"slider {label!r} did not reach {target!r} in {max_presses} key presses")
    wait_for_app_idle(page, timeout)


def server_scratch() -> Path:
    """The browser tests' server keeps its registry, export root and data root here (in the suite's temporary
    folder, tests/conftest.py; its cache is the suite's)."""
    return Path(os.environ["DISTILL_STUDIO_TEST_TMP"]) / "e2e-server"


def screenshot_dir() -> Path:
    """Folder for screenshots: env ``DISTILL_STUDIO_SCREENSHOTS`` (relative to the repo root; the README's come from
    ``DISTILL_STUDIO_SCREENSHOTS=docs/screenshots``), else the suite's temporary folder."""
    folder = Path(os.environ.get("DISTILL_STUDIO_SCREENSHOTS") or Path(os.environ["DISTILL_STUDIO_TEST_TMP"]) / "screenshots")
    return folder if folder.is_absolute() else REPO_ROOT / folder


def screenshot(page, path: str | os.PathLike, full_page: bool = True) -> Path:
    """Save a PNG of the page; a relative ``path`` goes under :func:`screenshot_dir`. Returns the file.

    Streamlit scrolls its main area inside a container, not the document, so a plain full-page
    screenshot is cut at the viewport; the viewport is grown to the content's height for the shot.
    """
    target = Path(path)
    if not target.is_absolute():
        target = screenshot_dir() / target
    target.parent.mkdir(parents=True, exist_ok=True)
    wait_for_images(page)
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(document.documentElement.scrollHeight,
        ...Array.from(document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"],'
                                                + ' [data-testid="stSidebarContent"]'), e => e.scrollHeight))""")
    grow = full_page and size is not None and height > size["height"]
    if grow:
        page.set_viewport_size({"width": size["width"], "height": int(min(height, 10000))})
        page.wait_for_timeout(300)  # let the layout follow the new size
    try:
        page.screenshot(path=str(target), full_page=full_page)
    finally:
        if grow:
            page.set_viewport_size(size)
    return target


def element_digest(locator) -> str:
    """SHA-256 of a locator's screenshot: a change detector for rendered images and charts."""
    return hashlib.sha256(locator.screenshot()).hexdigest()


def dataframe_rows(locator) -> list[dict[str, str]]:
    """The rows of an ``st.dataframe`` as {column header: cell text}, read from the accessible ``<table
    role="grid">`` that glide-data-grid keeps inside its canvas (the canvas itself is pixels). Only the
    columns and rows the grid has drawn are there: pinned and leftmost columns, rows in view."""
    return locator.locator('table[role="grid"]').first.evaluate("""table => {
      const heads = Array.from(table.querySelectorAll('thead th')).map(th => th.textContent.trim());
      return Array.from(table.querySelectorAll('tbody tr')).map(tr => Object.fromEntries(
        Array.from(tr.querySelectorAll('td')).map((td, i) => [heads[i], td.textContent.trim()])));
    }""")
