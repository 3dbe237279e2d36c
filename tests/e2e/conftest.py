"""Fixtures for the end-to-end browser tests: a headless ``streamlit run app.py`` and a Playwright page in
Debian's chromium (apt package ``chromium``; ``bash scripts/dev.sh test`` installs it). No browser is
downloaded: never run ``playwright install``.

Without chromium or the playwright package the tests are skipped, except under CI (env ``CI`` set) or
with ``DISTILL_STUDIO_REQUIRE_E2E=1``, where they fail so that CI cannot skip them silently.

Environment knobs: ``DISTILL_STUDIO_CHROMIUM`` (browser binary, default /usr/bin/chromium),
``DISTILL_STUDIO_E2E_START_TIMEOUT`` (seconds to wait for the server, default 120),
``DISTILL_STUDIO_SCREENSHOTS`` (see helpers.screenshot), ``DISTILL_STUDIO_E2E_ARTIFACTS`` (where a failed
test's last screenshot and the server log go, default the suite's temporary folder: tests/conftest.py).
The server inherits the suite's temporary cache, registry and export root (tests/conftest.py), never the
checkout's.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO_ROOT, install_idle_probe, server_scratch

CHROMIUM = os.environ.get("DISTILL_STUDIO_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT = float(os.environ.get("DISTILL_STUDIO_E2E_START_TIMEOUT", "120"))
# The machines' network is closed: these flags keep chromium from trying to reach Google's services
# (a storm of refused connections) and from needing a GPU, a sandbox or a big /dev/shm (containers).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--no-proxy-server"]
VIEWPORT = {"width": 1400, "height": 900}


def _e2e_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return (ci not in ("", "0", "false", "no")) or os.environ.get("DISTILL_STUDIO_REQUIRE_E2E") == "1"


def _missing(reason: str):
    """Skip the test, or fail it where e2e tests are required (CI)."""
    if _e2e_required():
        pytest.fail(f"{reason} (required here: CI or DISTILL_STUDIO_REQUIRE_E2E=1; "
                    "`bash scripts/dev.sh test` installs both)", pytrace=False)
    pytest.skip(f"{reason}; `bash scripts/dev.sh test` installs it")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("DISTILL_STUDIO_E2E_ARTIFACTS") or Path(os.environ["DISTILL_STUDIO_TEST_TMP"]) / "e2e")
    return folder if folder.is_absolute() else REPO_ROOT / folder


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: browser tests of the Streamlit app (tests/e2e; deselect with -m 'not e2e')")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)  # browser_page reads it to keep a screenshot of a failure
    return report


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(url: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.read().decode(errors="replace").strip()
    except OSError:
        return None


def _tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


@pytest.fixture(scope="session")
def streamlit_server():
    """Base URL (``http://127.0.0.1:PORT``) of ``streamlit run app.py`` started headless from the repo root.

    One server for the whole session (each browser page is its own Streamlit session). The file watcher
    is off so that edits to the sources while tests run do not show "Source file changed" or rerun the app.
    The server's output is in ``<artifacts>/streamlit-PORT.log`` (and shown if it dies or never answers).
    """
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_dir = artifacts_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"streamlit-{port}.log"
    scratch = server_scratch()
    env = {**os.environ, "DISTILL_STUDIO_UMAP_AUTOSTART": "0", "PYTHONUNBUFFERED": "1",
           "DISTILL_REGISTRY": str(scratch / "registry.sqlite"), "DISTILL_STUDIO_EXPORT_ROOT": str(scratch / "exports"),
           "DISTILL_STUDIO_DATA_ROOT": str(scratch / "data")}
    (scratch / "data").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while _health(f"{base_url}/_stcore/health") != "ok":
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with code {process.returncode} before answering:\n"
                            f"{_tail(log_path)}", pytrace=False)
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"streamlit did not answer {base_url}/_stcore/health within {START_TIMEOUT:.0f} s:\n"
                            f"{_tail(log_path)}", pytrace=False)
            time.sleep(0.25)
        print(f"\n[e2e] streamlit ready at {base_url} in {time.monotonic() - started:.1f} s (log: {log_path})")
        yield base_url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)  # the server's own process group (start_new_session)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session", autouse=True)
def e2e_requirements():
    """Skip (or, under CI, fail) every test here before anything starts when the browser stack is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the Python package playwright is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"no chromium at {CHROMIUM} (apt package chromium)")


@pytest.fixture(scope="session")
def browser(e2e_requirements):
    """A headless Debian chromium driven by Playwright (one per session)."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception:
        playwright.stop()
        raise
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


@pytest.fixture
def second_page(browser):
    """A page in a second browser context: another browser, with its own cookies (so another owner of runs)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    install_idle_probe(context)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def browser_page(request, browser):
    """A fresh page (own context: cookies, downloads) at 1400x900 with downloads accepted.

    Uncaught page errors are collected in ``page.e2e_errors`` (a list of str). If the test fails, a
    screenshot of the page is kept as ``<artifacts>/<test name>.png``.
    """
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    install_idle_probe(context)  # lets helpers.wait_for_app_idle see when the DOM has stopped changing
    page = context.new_page()
    page.e2e_errors = []
    page.on("pageerror", lambda error: page.e2e_errors.append(str(error)))
    try:
        yield page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            try:
                folder = artifacts_dir()
                folder.mkdir(parents=True, exist_ok=True)
                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
                page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
            except Exception:  # noqa: BLE001 - best effort
                pass
        context.close()
