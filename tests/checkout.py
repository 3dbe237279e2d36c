"""What the suite must leave as it found it: the checkout's default output folders (tests/conftest.py checks)."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_OUTPUTS = (".cache", "out", "exports")   # what the app and the CLI write by default inside the checkout


def checkout_listing(root: Path = REPO_ROOT) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under the checkout's default output folders."""
    found = {}
    for name in CHECKOUT_OUTPUTS:
        for path in (root / name).rglob("*") if (root / name).is_dir() else ():
            if path.is_file():
                stat = path.stat()
                found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found
