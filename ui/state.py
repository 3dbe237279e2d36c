"""Process-wide resources (loaded once, shared read-only by every browser session) and per-session state.

Per session (``st.session_state``): the run history, the current run, the selection. Nothing a session
owns is reachable from another session; models and the engine are shared and only ever read.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import replace

import streamlit as st

from core.config import DistillConfig, config_hash
from core.models.spec import ModelSpec
from core.studio.jobs import BackgroundJob
from core.studio.session import (
    Run,
    RunHistory,
    Studio,
    ensure_scores,
    load_studio,
    record_run,
    run_once,
)


def app_threads() -> int:
    """Torch threads of the app's process: $DISTILL_STUDIO_THREADS, else one core fewer than the machine has
    (at least 1). The server shares the machine with the browser; on 2 cores two torch threads made guided
    sampling several times slower under that load (MACHINE-NOTES), and scripts/bench_app.py measures both."""
    value = os.environ.get("DISTILL_STUDIO_THREADS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"DISTILL_STUDIO_THREADS must be a whole number >= 1, got {value!r}")
        return int(value)
    return max(1, (os.cpu_count() or 2) - 1)


@st.cache_resource(show_spinner=False, max_entries=4)
def _studio_job(source_json: str) -> BackgroundJob:
    import torch

    torch.set_num_threads(app_threads())   # process-wide; before any model runs
    source = json.loads(source_json)
    spec = ModelSpec(**source["models"]) if source.get("models") else None
    return BackgroundJob(lambda progress: load_studio(spec, data_dir=source.get("data_dir"),
                                                      latent_store=source.get("latent_store"), progress=progress,
                                                      model_folder=source.get("model_folder")),
                         name="load-studio", nice=0).start()   # the first page waits on it


def get_studio(source: dict | None = None) -> Studio:
    """The Studio of ``source`` (None: the embedded default), loaded once per process and shared by every
    session; the first call shows the loading progress (on a machine's very first start this includes
    encoding the dataset, about 30 s). Raises what loading raised (bad model references, a foreign store)."""
    source = source or {"models": None, "latent_store": None, "data_dir": os.environ.get("FASHION_MNIST_DIR")}
    key = json.dumps(source, sort_keys=True)
    job = _studio_job(key)
    if not job.done:
        bar = st.progress(0.0, text="Starting…")
        while not job.done:
            bar.progress(min(1.0, job.fraction), text=f"Loading ({job.elapsed:.0f} s): {job.message}")
            time.sleep(0.25)
        bar.empty()
    if job.error is not None:
        _studio_job.clear(key)   # so that the same references can be tried again once fixed
    return job.wait()


OWNER_COOKIE = "distill_studio_owner"   # a random token: which browser made a run (core.registry.RegistryView)


def session_owner() -> str:
    """This browser's owner name in the run registry ("app:<token>"): the token of its cookie, else a new one
    written to a cookie (so a reload or a second tab of the same browser is the same owner, another browser
    never is). The token is 128 random bits; the cookie is the browser's only claim to its runs."""
    owner = st.session_state.get("owner")
    if owner is None:
        token = st.context.cookies.get(OWNER_COOKIE)
        if not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{32}", token):   # (AppTest has no cookies)
            token = secrets.token_hex(16)
            st.html(f"<script>document.cookie = '{OWNER_COOKIE}={token}; path=/; max-age=31536000; "
                    "SameSite=Strict';</script>", unsafe_allow_javascript=True)
        owner = st.session_state["owner"] = f"app:{token}"
    return owner


def session_studio(shared: Studio) -> Studio:
    """The process-wide studio as this session sees it: the same models and data, and the run registry through
    this browser's view (its own runs and the command line's; core.registry.RegistryView)."""
    if shared.registry is None:
        return shared
    return replace(shared, registry=shared.registry.view(session_owner()))


def history() -> RunHistory:
    return st.session_state.setdefault("history", RunHistory())


def config_key(config: DistillConfig) -> str:
    return config_hash(config)


def update_run(studio: Studio, config: DistillConfig | None, apply: bool = True) -> tuple[Run | None, str | None]:
    """Make ``config`` the current run: the current run if it has these settings, a run of the history
    that has them (nothing is recomputed), else a new run. With ``apply`` False nothing changes (settings
    are staged until the Apply button). On a bad combination the last good run stays; the error returns."""
    current: Run | None = st.session_state.get("run")
    same_data = str(st.session_state.get("run_key", "")).startswith(f"{id(studio.engine)}-")
    if config is None or (not apply and same_data):   # other data and models: their run, whatever is staged
        return current, None
    key = f"{id(studio.engine)}-{config_key(config)}"   # the same settings on other data are another run
    stale = st.session_state.get("refine_job")
    if stale is not None and stale.key != key:   # settings moved on: a refinement of others stops
        stale.cancel()
        st.session_state.pop("refine_job")
    if current is not None and st.session_state.get("run_key") == key:
        return current, None
    previous = next((r for r in reversed(history().runs) if r.studio_key == key), None)
    if previous is not None:
        run = previous
        ensure_scores(studio, run)
    elif config.refine.iterations:   # tens of seconds: a background job makes it, the last run stays meanwhile
        job = refine_job(studio, config, key)
        if not job.done:
            return current, None
        if job.error is not None:
            return current, f"the refinement did not finish ({job.error}); change a setting to start it again"
        run = history().add(job.result)
        run.studio_key = key
        record_run(studio, run)
        st.session_state.pop("refine_job", None)
    else:
        try:
            with st.spinner("Distilling and scoring…"):
                run = history().add(run_once(studio, config, defer=True))
        except ValueError as exc:
            return current, str(exc)
        run.studio_key = key
        record_run(studio, run)
    if current is not None and current is not run and current.scores_job is not None:
        current.scores_job.cancel()   # a run no longer shown stops scoring (a dragged slider piles up none)
    if current is not None and current is not run:
        st.session_state.pop("address_refused", None)   # its banner concerned the run the address made
    st.session_state["run"], st.session_state["run_key"] = run, key
    st.session_state["selected"] = []
    return run, None


def refine_job(studio: Studio, config: DistillConfig, key: str) -> BackgroundJob:
    """This session's background job making the refined set of ``config`` (started on the first call for ``key``).
    Its progress raises EvaluationCancelled once cancelled."""
    from core.evaluation.students import EvaluationCancelled

    job: BackgroundJob | None = st.session_state.get("refine_job")
    if job is not None:   # update_run has dropped a job of other settings
        return job

    def make(progress) -> Run:
        def report(fraction: float, message: str) -> None:
            if job.cancelled:
                raise EvaluationCancelled("cancelled")
            progress(fraction, message)
        return run_once(studio, config, defer=True, progress=report)

    job = BackgroundJob(make, name="refine")
    job.key = key
    st.session_state["refine_job"] = job.start()
    return job


def pending_changes(studio: Studio, config: DistillConfig | None) -> bool:
    """True when ``config`` differs from the current run's settings (what Apply would run)."""
    return config is not None and st.session_state.get("run_key") != f"{id(studio.engine)}-{config_key(config)}"


def current_run() -> Run | None:
    return st.session_state.get("run")


def selected_ids() -> list[int]:
    return st.session_state.setdefault("selected", [])


def set_selected(ids: list[int]) -> None:
    st.session_state["selected"] = sorted(set(int(i) for i in ids))
