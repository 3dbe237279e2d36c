"""One server, several browsers, as a team would share it: each browser downloads its own set, sees only its own
runs and the command line's (read-only), cannot point the server at files outside the data root, and a page
address with values out of range gets the settings banner instead of a traceback. The server of these tests
records into a temporary registry, never the checkout's."""
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest
from checkout import checkout_listing
from helpers import (
    MAIN,
    REPO_ROOT,
    button,
    choose,
    download,
    exceptions,
    goto_page,
    reveal,
    server_scratch,
    wait_for_app_idle,
    widget,
)

from core.registry import Registry


def zip_manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("manifest.json"))


def test_two_browsers_download_their_own_sets_from_the_export_page(streamlit_server, browser_page, second_page,
                                                                   tmp_path):
    first, second = browser_page, second_page
    goto_page(first, streamlit_server, "export?ipc=1", timeout=300)
    zip_first = download(first, "Download zip", tmp_path / "first")
    goto_page(second, streamlit_server, "export?ipc=2&classes=0,1", timeout=300)
    zip_second = download(second, "Download zip", tmp_path / "second")
    got_first, got_second = zip_manifest(zip_first), zip_manifest(zip_second)
    assert got_first["config"]["ipc"] == 1 and got_first["num_images"] == 10
    assert got_second["config"]["ipc"] == 2 and got_second["config"]["classes"] == [0, 1]
    assert got_second["num_images"] == 4 and zip_first.name != zip_second.name
    assert "ipc2" in zip_second.name and "ipc1" in zip_first.name
    goto_page(first, streamlit_server, "export?ipc=1")   # the first browser again: its own set still
    assert zip_manifest(download(first, "Download zip", tmp_path / "again"))["config"]["ipc"] == 1


def runs_caption_count(page) -> int:
    return int(page.inner_text(MAIN).split(" runs: ")[0].split()[-1])


def test_a_browser_sees_its_own_runs_and_the_command_lines_and_deletes_only_its_own(streamlit_server, browser_page,
                                                                                     second_page):
    with Registry(server_scratch() / "registry.sqlite") as registry:   # a run of the command line
        cli_run = registry.add_run("distill", {"method": "random", "ipc": 7}, commit="")
    first, second = browser_page, second_page
    goto_page(first, streamlit_server, "runs?ipc=3", timeout=300)
    goto_page(second, streamlit_server, "runs?ipc=4", timeout=300)
    with Registry(server_scratch() / "registry.sqlite") as registry:
        owners = {r["config"].get("ipc"): r["owner"] for r in registry.runs() if r["kind"] == "app"}
    assert owners[3] != owners[4] and owners[3].startswith("app:")
    for page, ipc in ((first, 3), (second, 4)):
        goto_page(page, streamlit_server, f"runs?ipc={ipc}")
        text = page.inner_text(MAIN)
        assert str(server_scratch()) not in text and "registry.sqlite" not in text   # no server path
        shown = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Run", exact=True))
        shown.click()
        options = page.locator('[role="option"]').all_inner_texts()
        page.keyboard.press("Escape")
        ours = [r for r in Registry(server_scratch() / "registry.sqlite").runs() if r["owner"] == owners[ipc]]
        assert set(options) == {f"run {r['id']}" for r in ours} | {f"run {cli_run}"}, options
    # the command line's run is read-only: pick it, its delete is disabled
    box = widget(first, "stSelectbox", "Run")
    box.click()
    first.locator('[role="option"]').filter(has=first.get_by_text(f"run {cli_run}", exact=True)).first.click()
    wait_for_app_idle(first)
    assert "read-only here" in first.inner_text(MAIN)
    assert button(first, "Delete run").is_disabled() and button(first, "Pin").is_disabled()
    # its own run it may delete: pick it, confirm, delete
    own = max(r["id"] for r in Registry(server_scratch() / "registry.sqlite").runs() if r["owner"] == owners[3])
    box.click()
    first.locator('[role="option"]').filter(has=first.get_by_text(f"run {own}", exact=True)).first.click()
    wait_for_app_idle(first)
    first.get_by_text("I want to delete this run").click()
    wait_for_app_idle(first)
    button(first, "Delete run").click()
    wait_for_app_idle(first)
    with Registry(server_scratch() / "registry.sqlite") as registry:
        left = {r["id"] for r in registry.runs()}
    assert own not in left and cli_run in left
    assert exceptions(first) == [] and exceptions(second) == []


def test_sidebar_paths_outside_the_data_root_are_refused_in_one_line(streamlit_server, browser_page):
    page = browser_page
    goto_page(page, streamlit_server, "?ipc=2", timeout=300)
    page.locator('[data-testid="stSidebar"]').get_by_text("Model folder (prepare)", exact=True).click()
    wait_for_app_idle(page)
    for typed, message in (("/etc", "outside the data root"), ("../../..", "outside the data root")):
        field = widget(page, "stTextInput", "Model folder").locator("input")
        field.fill(typed)
        field.press("Enter")
        wait_for_app_idle(page)
        button(page, "Load").click()
        wait_for_app_idle(page)
        errors = page.locator('[data-testid="stSidebar"] [data-testid="stAlertContentError"]').all_inner_texts()
        assert len(errors) == 1 and message in errors[0] and str(REPO_ROOT) not in errors[0], errors
    assert exceptions(page) == []
    assert "20 images" in page.inner_text(MAIN) or page.locator(f'{MAIN} [data-testid="stImage"]').count() > 0


@pytest.mark.parametrize("address, named", [
    ("?steps=100000", "steps=100000"), ("export?t0=5", "t0=5"), ("?guidance=inf", "guidance=inf"),
    ("?cfg_scale=-1", "cfg_scale=-1"), ("?classes=-1", "classes=-1"), ("?seed=99999999999", "seed=99999999999"),
])
def test_an_address_with_values_out_of_range_gets_the_settings_banner(streamlit_server, browser_page, address, named):
    page = browser_page
    goto_page(page, streamlit_server, address, timeout=300)
    assert exceptions(page) == []
    text = page.inner_text(MAIN)
    assert "Your settings were not applied" in text and named in text, text[:500]
    assert "Traceback" not in text and str(REPO_ROOT) not in text


def test_the_servers_runs_go_to_a_temporary_registry_not_the_checkouts(streamlit_server, browser_page, request):
    goto_page(browser_page, streamlit_server, "?ipc=5", timeout=300)
    with sqlite3.connect(server_scratch() / "registry.sqlite") as db:
        ipcs = [json.loads(c)["ipc"] for (c,) in db.execute("SELECT config FROM runs WHERE kind = 'app'")]
    assert 5 in ipcs
    assert checkout_listing() == request.config._distill_checkout   # as it was when the suite started


def test_a_refinement_picked_in_the_sidebar_runs_in_the_background_then_exports(streamlit_server, browser_page,
                                                                                tmp_path):
    page = browser_page
    goto_page(page, streamlit_server, "?ipc=1&refine_iterations=10", timeout=300)
    assert "refined" not in page.inner_text(MAIN)
    reveal(page, widget(page, "stSelectbox", "Refine the set"))
    choose(page, "Refine the set", "tdm — teacher-feature MMD (recommended)")
    progress = page.get_by_text("Refining the set", exact=False)
    page.get_by_text("Run 2: pgfm, refined (teacher features, mmd, 10 iterations)", exact=False).wait_for(
        timeout=300_000)   # the progress bar showed meanwhile; then the refined set became run 2
    wait_for_app_idle(page)
    assert progress.count() == 0 and exceptions(page) == []
    goto_page(page, streamlit_server, "export", title="Export")
    manifest = zip_manifest(download(page, "Download zip", tmp_path))
    assert manifest["config"]["refine"]["iterations"] == 10 and manifest["config"]["refine"]["embedding"] == "teacher"
    goto_page(page, streamlit_server, "?ipc=1&refine_iterations=600")   # a long one, cancelled in the browser
    box = widget(page, "stSelectbox", "Refine the set")
    reveal(page, box)
    box.click()   # not helpers.choose: the page is not idle while the job's progress ticks every second
    page.locator('[role="option"]').filter(has=page.get_by_text("dm — random-network DM", exact=True)).first.click()
    page.get_by_text("Refining the set", exact=False).first.wait_for(timeout=60_000)
    button(page, "Cancel").click()
    page.get_by_text("the refinement did not finish", exact=False).first.wait_for(timeout=120_000)
    assert "Run 1: pgfm, IPC 1" in page.inner_text(MAIN) and exceptions(page) == []
