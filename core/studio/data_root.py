"""What the users of a served app may point it at: paths inside the data root, model hub ids only by opt-in.

The app loads what a sidebar field names and keeps it for every session of the process, so a field must not
reach the server's other files, and must not make the server download from a hub unless whoever started it
said so. The data root is ``$DISTILL_STUDIO_DATA_ROOT`` or, by default, the repository's ``models/`` and
``stores/`` (where ``python -m core prepare`` and ``encode --store`` write by convention); hub ids are accepted
when the server was started with ``DISTILL_STUDIO_ALLOW_HUB=1``. Refusals are one line that repeats what the
user typed and never shows a server path (``redact`` takes them out of other messages too).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from core.config import ASSETS

DATA_ROOT_ENV = "DISTILL_STUDIO_DATA_ROOT"
ALLOW_HUB_ENV = "DISTILL_STUDIO_ALLOW_HUB"
REPOSITORY = ASSETS.parent
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
ROOT_WORDS = "the data root (the app's models/ or stores/ folders, or $DISTILL_STUDIO_DATA_ROOT where the server sets it)"


def data_roots() -> tuple[Path, ...]:
    """The folders users may name paths inside (resolved)."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    roots = (Path(value),) if value else (REPOSITORY / "models", REPOSITORY / "stores")
    return tuple(root.resolve() for root in roots)


def hub_allowed() -> bool:
    return os.environ.get(ALLOW_HUB_ENV, "").strip() == "1"


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _candidates(text: str, roots: tuple[Path, ...]) -> list[Path]:
    """Where ``text`` may point: itself when absolute, else relative to the repository (``models/NAME``, as the
    fields' hints say) or to a data root (``NAME``). Symbolic links are followed, so one that leads out of the
    root counts as outside; a link loop points nowhere."""
    raw = [Path(text)] if Path(text).is_absolute() else [REPOSITORY / text, *(root / text for root in roots)]
    resolved = []
    for path in raw:
        try:
            resolved.append(path.resolve())
        except (OSError, RuntimeError):   # a symbolic link loop
            continue
    return resolved


def confine(reference: str, field: str, hub: bool = False) -> str:
    """The resolved path of the user-typed ``reference`` inside the data root, or, for a field that takes one
    (``hub``) on a server that allows it, the hub id itself. Raises ValueError (one line naming ``field`` and
    what was typed; no server path) for anything else."""
    text = reference.strip()
    if not text:
        raise ValueError(f"{field}: give a path inside {ROOT_WORDS}")
    roots = data_roots()
    inside = [path for path in _candidates(text, roots) if _inside(path, roots)]
    found = next((path for path in inside if path.exists()), None)
    if found is not None:
        return str(found)
    if hub and HUB_ID.fullmatch(text) and not any(path.parent.exists() for path in inside):
        if hub_allowed():
            return text
        raise ValueError(f"{field} {text!r} looks like a model hub id, and this server does not download models "
                         f"(whoever starts it can allow hub ids with {ALLOW_HUB_ENV}=1)")
    if inside:
        raise ValueError(f"{field} {text!r} was not found in {ROOT_WORDS}")
    raise ValueError(f"{field} {text!r} is outside {ROOT_WORDS}; name a folder or file inside it")


SERVER_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s'\"/:,;()]+)+/?")


def redact(message: str) -> str:
    """``message`` with the server's paths taken out: the data root's as ``<data root>/...``, any other absolute
    path as ``.../NAME`` (its last part only)."""
    roots = data_roots()

    def neutral(match: re.Match) -> str:
        path = match.group(0).rstrip("/")
        root = next((str(r) for r in roots if path == str(r) or path.startswith(f"{r}/")), None)
        return "<data root>" + path[len(root):] if root else ".../" + path.rsplit("/", 1)[-1]
    return SERVER_PATH.sub(neutral, message)
