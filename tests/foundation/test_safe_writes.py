"""Safe writes: --overwrite replaces only previous exports, a replace is atomic (also when the writer is
killed), concurrent exports to one new name cannot both succeed, outputs are checked before any work,
and exports and model files have ordinary permissions."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.cli.main import main
from core.config import DistillConfig
from core.errors import OutputError, OutputExistsError
from core.io import locked
from core.pipeline.distill import DistilledSet
from core.pipeline.export import export_imagefolder, export_zip, export_zip_bytes, is_export

ROOT = Path(__file__).resolve().parents[2]


def make_set(n: int = 6, seed: int = 0) -> DistilledSet:
    """A DistilledSet of ``n`` random images in 2 classes (no models needed)."""
    g = torch.Generator().manual_seed(seed)
    labels = np.arange(n) % 2
    return DistilledSet(images=torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, labels=labels,
                        weights=np.ones(n), prototype_ids=np.arange(n) // 2, latents=torch.randn(n, 4, 2, 2, generator=g),
                        prototypes=torch.randn(n, 4, 2, 2, generator=g), landing_error=np.zeros(n),
                        class_names=("a", "b"), config=DistillConfig(method="d4m", ipc=max(1, n // 2), seed=seed),
                        nfe=0, timings={"total_s": 0.0})


def assert_whole_export(folder: Path, num_images: int) -> None:
    """``folder`` is one complete export: its manifest lists exactly the PNGs on disk and the latents' rows."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = sorted(im["file"] for im in manifest["images"])
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*.png"))
    assert manifest["num_images"] == num_images == len(listed) and listed == on_disk
    assert load_file(str(folder / "latents.safetensors"))["latents"].shape[0] == num_images


def siblings(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name[:64]}-")]


# ------------------------------------------------------------------------------------------------
# --overwrite never deletes what the tool did not write
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_models(monkeypatch):
    """Loading models fails the test: a refusal must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the output was checked")
    monkeypatch.setattr("core.cli.distill.engine_from_args", refuse)


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "root"])
def test_overwrite_never_touches_the_current_folder_its_parents_home_or_root(where, tmp_path, monkeypatch, capsys,
                                                                             no_models):
    work = tmp_path / "projects" / "somefolder"
    work.mkdir(parents=True)
    (tmp_path / "home").mkdir()
    sentinel = work / "thesis.tex"
    sentinel.write_text("years of work")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = {"cwd": ".", "parent": "..", "home": str(tmp_path / "home"), "root": "/"}[where]
    code = main(["distill", "--method", "ddoq", "--ipc", "1", "--classes", "0", "--out", out, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert {"cwd": "the current folder", "parent": "a parent of the current folder", "home": "your home folder",
            "root": "the root folder"}[where] in err
    assert sentinel.read_text() == "years of work" and sorted(os.listdir(work)) == ["thesis.tex"]


def test_overwrite_refuses_a_folder_or_zip_that_is_not_an_export(tmp_path, capsys, no_models):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    (folder / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data.csv", "1,2")
    (tmp_path / "plain.zip").write_text("not a zip")
    for out in (folder, archive, tmp_path / "plain.zip"):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(["distill", "--method", "d4m", "--out", str(out), "--overwrite"]) == 2
        assert "not an export of this tool" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (folder / "notes.txt").read_text() == "keep" and zipfile.ZipFile(archive).namelist() == ["data.csv"]


def test_overwrite_replaces_a_previous_export_folder_and_zip(tmp_path):
    out = export_imagefolder(make_set(6), tmp_path / "set")
    assert is_export(out)
    export_imagefolder(make_set(4), out, overwrite=True)
    assert_whole_export(out, 4)
    archive = export_zip(make_set(6), tmp_path / "set.zip")
    with pytest.raises(OutputExistsError, match="exists"):
        export_zip(make_set(4), archive)
    export_zip(make_set(4), archive, overwrite=True)
    assert json.loads(zipfile.ZipFile(archive).read("manifest.json"))["num_images"] == 4
    assert not siblings(out) and not siblings(archive)


def test_swap_is_undone_when_the_target_changed_into_something_else(tmp_path, monkeypatch):
    """A target that stops being an export between the check and the swap is put back, untouched."""
    import core.pipeline.export

    out = export_imagefolder(make_set(6), tmp_path / "set")
    real_check = core.pipeline.export.check_export_target

    def swap_in_user_data(target, overwrite):
        checked = real_check(target, overwrite)
        (out / "manifest.json").write_text("{}")   # someone else's folder now
        (out / "notes.txt").write_text("keep")
        return checked
    monkeypatch.setattr(core.pipeline.export, "check_export_target", swap_in_user_data)
    with pytest.raises(OutputExistsError, match="no longer something this tool wrote"):
        export_imagefolder(make_set(4), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep" and len(list(out.glob("*/*.png"))) == 6
    assert not siblings(out)


# ------------------------------------------------------------------------------------------------
# Atomic replace under SIGKILL, and concurrent exports
# ------------------------------------------------------------------------------------------------

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    import PIL.Image
    from test_safe_writes import make_set
    from core.pipeline.export import export_imagefolder, export_zip
    save = PIL.Image.Image.save
    def slow_save(self, *args, **kwargs):
        time.sleep(0.01)
        return save(self, *args, **kwargs)
    PIL.Image.Image.save = slow_save
    export = export_zip if sys.argv[1].endswith(".zip") else export_imagefolder
    export(make_set(int(sys.argv[2]), seed=1), sys.argv[1], overwrite=sys.argv[3] == "1")
    print("done", flush=True)
""")


def start_slow_export(tmp_path: Path, out: Path, n: int, overwrite: bool) -> subprocess.Popen:
    script = tmp_path / "slow_export.py"
    script.write_text(SLOW_WRITER.format(root=str(ROOT), tests=str(Path(__file__).resolve().parent)))
    return subprocess.Popen([sys.executable, str(script), str(out), str(n), "1" if overwrite else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_sigkill_during_overwrite_leaves_the_old_export_whole_and_the_next_run_cleans_up(kind, tmp_path):
    out = tmp_path / ("set.zip" if kind == "zip" else "set")
    old = (export_zip if kind == "zip" else export_imagefolder)(make_set(6), out)
    old_bytes = out.read_bytes() if kind == "zip" else None
    writer = start_slow_export(tmp_path, out, 3000, overwrite=True)

    def writing() -> bool:
        parts = siblings(out)
        if kind == "zip":
            return bool(parts) and parts[0].stat().st_size > 20000
        return bool(parts) and len(list(parts[0].glob("*/*.png"))) > 50
    wait_for(writing)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    if kind == "zip":
        assert out.read_bytes() == old_bytes
    else:
        assert_whole_export(old, 6)
    assert len(siblings(out)) == 1          # the killed run's partial export, beside the target
    (export_zip if kind == "zip" else export_imagefolder)(make_set(4), out, overwrite=True)
    assert not siblings(out), "the next run to the same target removes the stale partial export"
    if kind == "zip":
        assert json.loads(zipfile.ZipFile(out).read("manifest.json"))["num_images"] == 4
    else:
        assert_whole_export(out, 4)


def test_two_threads_exporting_to_one_new_name_cannot_both_succeed(tmp_path, monkeypatch):
    import PIL.Image

    save = PIL.Image.Image.save
    monkeypatch.setattr(PIL.Image.Image, "save", lambda self, *a, **k: (time.sleep(0.002), save(self, *a, **k))[1])
    out = tmp_path / "set"
    results: dict[int, object] = {}

    def export(k: int) -> None:
        try:
            results[k] = export_imagefolder(make_set(100 + 10 * k, seed=k), out)
        except OutputExistsError as exc:
            results[k] = exc
    threads = [threading.Thread(target=export, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [k for k, r in results.items() if isinstance(r, OutputExistsError)]
    assert len(failed) == 1 and "appeared while this run was writing" in str(results[failed[0]])
    assert_whole_export(out, 100 + 10 * (1 - failed[0]))
    assert not siblings(out)


def test_two_processes_exporting_to_one_new_name_cannot_both_succeed(tmp_path):
    out = tmp_path / "set"
    writers = [start_slow_export(tmp_path, out, 200, overwrite=False) for _ in range(2)]
    outcomes = [w.communicate(timeout=120) for w in writers]
    codes = sorted(w.returncode for w in writers)
    assert codes[0] == 0 and codes[1] != 0, outcomes
    assert any("OutputExistsError" in err and "appeared while this run was writing" in err for _, err in outcomes)
    assert_whole_export(out, 200)
    assert not siblings(out)


def test_exports_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = export_imagefolder(make_set(4), tmp_path / "set")
        archive = export_zip(make_set(4), tmp_path / "set.zip")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755 and archive.stat().st_mode & 0o777 == 0o644
    for path in out.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    with zipfile.ZipFile(archive) as z:
        assert {info.external_attr >> 16 & 0o777 for info in z.infolist()} == {0o644}


def test_model_files_get_ordinary_permissions(tmp_path):
    from safetensors.torch import save_file

    from core.io import atomic_directory, save_model_folder

    old = os.umask(0o022)
    try:   # safetensors creates its files 0600: model folders (prepare's) and VAE folders get the umask's modes
        save_model_folder(tmp_path / "model", "kind", {"width": 2}, {"w": torch.zeros(2)})
        with atomic_directory(tmp_path / "vae") as tmp:
            (tmp / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "weights.safetensors"))
    finally:
        os.umask(old)
    for path in [*(tmp_path / "model").rglob("*"), *(tmp_path / "vae").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_zip_bytes_need_no_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: pytest.fail("a temporary folder was made"))
    data = export_zip_bytes(make_set(4))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert "manifest.json" in z.namelist() and len([n for n in z.namelist() if n.endswith(".png")]) == 4


# ------------------------------------------------------------------------------------------------
# The output is checked before any work; OSError is one line
# ------------------------------------------------------------------------------------------------

def unwritable_dir(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):   # root ignores permission bits: a folder no one can create in
        return Path("/proc")
    return locked


@pytest.mark.parametrize("case", ["unwritable", "under-a-file", "zip-is-a-folder", "zip-is-a-symlink",
                                  "folder-is-a-symlink", "name-too-long", "out-is-a-file"])
def test_bad_outputs_are_refused_before_loading_models(case, tmp_path, capsys, no_models):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir.zip").mkdir()
    (tmp_path / "link.zip").symlink_to(tmp_path / "file.txt")
    (tmp_path / "linkdir").symlink_to(tmp_path / "dir.zip")
    out, message = {
        "unwritable": (unwritable_dir(tmp_path) / "out", "cannot write in"),
        "under-a-file": (tmp_path / "file.txt" / "out", "is a file, not a folder, so nothing can be created under it"),
        "zip-is-a-folder": (tmp_path / "dir.zip", "is a folder; a .zip output must be a file path"),
        "zip-is-a-symlink": (tmp_path / "link.zip", "is a symbolic link"),
        "folder-is-a-symlink": (tmp_path / "linkdir", "is a symbolic link"),
        "name-too-long": (tmp_path / ("x" * 300), "300 bytes long"),
        "out-is-a-file": (tmp_path / "file.txt", "is a file, not a folder"),
    }[case]
    before = sorted(os.listdir(tmp_path))
    assert main(["distill", "--method", "d4m", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "file.txt").read_text() == "x"


@pytest.mark.parametrize("args, message", [
    (["distill", "--threads", "-1", "--out", "o"], "argument --threads: expected an integer >= 0, got -1"),
    (["evaluate", "somewhere", "--threads", "two"], "argument --threads: expected an integer >= 0, got 'two'"),
    (["bench", "--out", "README.md", "--report-only"], "is a file, not a folder"),
    (["eval-models", "--json", "."], "is a folder; give a file path"),
])
def test_bad_options_are_one_line_errors(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) if "--threads" in args else contextlib.nullcontext():
        code = main(args)
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    if "--threads" not in args:
        assert code == 2


def test_an_oserror_while_working_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o"))
    monkeypatch.setattr("core.pipeline.export.export_imagefolder", full)
    assert main(["distill", "--method", "d4m", "--ipc", "1", "--classes", "0", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 28] No space left on device") and "Traceback" not in err


def test_export_refuses_non_finite_latents_or_images(tmp_path):
    for field in ("latents", "images"):
        dset = make_set(4)
        getattr(dset, field)[2].view(-1)[0] = float("nan")
        with pytest.raises(ValueError, match=rf"1 of 4 images have NaN or infinite {field} \(ids \[2\]\)"):
            export_imagefolder(dset, tmp_path / "o")
        with pytest.raises(ValueError, match="NaN"):
            export_zip_bytes(dset)
    assert not (tmp_path / "o").exists() and not siblings(tmp_path / "o")


def test_app_export_page_shows_a_clear_error_for_a_300_character_name(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DISTILL_STUDIO_UMAP_AUTOSTART", "0")
    monkeypatch.setenv("DISTILL_STUDIO_EXPORT_ROOT", str(tmp_path / "exports"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["ipc"] = 1
    at.run()
    at.switch_page("pages/export.py").run()
    at.text_input(key="export_folder").set_value("n" * 300).run()
    next(b for b in at.button if b.label == "Export to folder").click().run()
    assert not at.exception, at.exception
    assert any("300 bytes long" in e.value for e in at.error)


def test_check_accepts_new_and_empty_targets(tmp_path):
    from core.pipeline.export import check_export_target

    (tmp_path / "empty").mkdir()
    assert check_export_target(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_export_target(tmp_path / "empty") == tmp_path / "empty"
    assert not (tmp_path / "new").exists()
    with pytest.raises(OutputError):
        check_export_target(tmp_path / ("y" * 256) / "set")


# ------------------------------------------------------------------------------------------------
# What counts as the tool's own, and the swap without renameat2
# ------------------------------------------------------------------------------------------------

def test_an_export_with_files_added_by_hand_is_not_replaced(tmp_path, capsys, no_models):
    out = export_imagefolder(make_set(4), tmp_path / "set")
    (out / "notes.txt").write_text("my analysis")
    assert not is_export(out)
    assert main(["distill", "--method", "d4m", "--out", str(out), "--overwrite"]) == 2
    assert "files in it that the export did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my analysis"


def test_a_check_that_raises_counts_as_not_ours_and_the_target_is_put_back(tmp_path):
    from core.io import new_sibling_file, publish

    target = tmp_path / "data.bin"
    target.write_text("theirs")
    new = new_sibling_file(target)
    new.write_text("ours")

    def broken_check(path):
        raise RuntimeError("encrypted zip entry")
    with pytest.raises(OutputExistsError, match="no longer something this tool wrote"):
        publish(new, target, replaceable=broken_check)
    assert target.read_text() == "theirs" and not siblings(target)


@pytest.fixture
def no_renameat2(monkeypatch):
    monkeypatch.setattr("core.io._exchange", lambda a, b: False)


def test_without_renameat2_overwrite_and_undo_still_work(tmp_path, no_renameat2):
    out = export_imagefolder(make_set(6), tmp_path / "set")
    export_imagefolder(make_set(4), out, overwrite=True)
    assert_whole_export(out, 4)
    archive = export_zip(make_set(6), tmp_path / "set.zip")
    export_zip(make_set(4), archive, overwrite=True)
    assert json.loads(zipfile.ZipFile(archive).read("manifest.json"))["num_images"] == 4
    from core.io import new_sibling_file, publish

    new = new_sibling_file(archive)
    new.write_text("ours")
    with pytest.raises(OutputExistsError):
        publish(new, archive, replaceable=lambda p: False)
    assert json.loads(zipfile.ZipFile(archive).read("manifest.json"))["num_images"] == 4
    assert not siblings(out) and not siblings(archive)


def test_a_target_set_aside_by_a_killed_swap_is_restored_by_the_next_run(tmp_path):
    """Without renameat2 a swap is three renames; a kill after the first leaves the old export as an ``old``
    sibling and no target: the next write to that target puts it back first."""
    from core.io import _sibling_name, remove_stale_siblings

    out = export_imagefolder(make_set(6), tmp_path / "set")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = Path(str(_sibling_name(out, "old")).replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    out.rename(aside)
    assert remove_stale_siblings(out) == [aside]
    assert_whole_export(out, 6)
    assert not siblings(out)


def test_train_vae_refuses_a_folder_it_did_not_write(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("core.training.vae.train_tiny_vae", lambda *a, **k: pytest.fail("trained"))
    hub_vae = tmp_path / "sd-vae"
    hub_vae.mkdir()
    (hub_vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    assert main(["train-vae", "--out", str(hub_vae)]) == 2
    assert "not a VAE folder that train-vae wrote" in capsys.readouterr().err
    assert sorted(os.listdir(hub_vae)) == ["config.json"]


def test_a_locked_folder_admits_one_holder_at_a_time(tmp_path):
    order = []

    def second_writer():
        with locked(tmp_path):
            order.append("second")

    with locked(tmp_path):
        waiting = threading.Thread(target=second_writer)
        waiting.start()
        waiting.join(timeout=0.5)   # it cannot enter while the first holds the lock
        order.append("first")
    waiting.join()
    assert order == ["first", "second"] and list(tmp_path.iterdir()) == []   # and no lock file is left


def test_a_system_without_flock_is_told_that_the_folder_is_not_locked(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)   # import fcntl now fails, as on Windows
    with pytest.warns(UserWarning, match="not locked; run one process per folder"):
        with locked(tmp_path):
            (tmp_path / "inside").write_text("x")
    assert (tmp_path / "inside").read_text() == "x"
