"""Coverage: per class, which of the real data's modes (DESIGN.md section 4) the set covers; coverage bars;
and this session's run history with a side-by-side comparison of two runs."""
import pandas as pd
import streamlit as st

from core.studio.figures import coverage_bars, mode_grid
from core.studio.session import COVERAGE_SCORES, covering_counts
from ui import state
from ui.frame import page_frame
from ui.widgets import SCORE_POLL_S, require_run

studio, _ = page_frame()
run = require_run()
names = run.dset.class_names
st.title("Coverage")
history = state.history()
with st.spinner("Scoring the set (mode coverage)…"):
    failed = run.wait_for_scores(only=COVERAGE_SCORES)   # PRDC and W2 may follow: the table below redraws for them
if failed is not None:
    st.error(f"Scoring run {run.run_id} failed: {failed}. The set itself is fine (its images and latent scores "
             "are shown on the other pages).")
elif run.coverage is None:
    st.info("Mode coverage needs a teacher for this data (the shipped one fits the embedded Fashion-MNIST only); "
            "the run history below has the latent scores.")
else:
    st.caption(f"Run {run.run_id}. Modes: k-means ({len(next(iter(run.coverage.covered.values())))} per class) of the "
               "teacher features of real training images; a sample covers its nearest mode when it lies within that "
               "mode's 95th-percentile radius. Numbers in the grid: covering samples.")
    classes = list(dict.fromkeys(run.dset.labels.tolist()))
    counts = covering_counts(run)
    st.metric("Mode coverage (mean over the run's classes)", f"{run.coverage.overall:.0%}")
    st.plotly_chart(mode_grid({c: run.coverage.covered[c] for c in classes}, {c: counts[c] for c in classes}, names),
                    width="stretch", key="mode_grid")

st.subheader("Run history (this session)")
scores_pending = run.scores_job is not None and not run.scores_job.done


@st.fragment(run_every=SCORE_POLL_S if scores_pending else None)
def run_table() -> None:
    """The history; while the current run's PRDC and W2 are computed in the background it redraws itself until they are in."""
    table = pd.DataFrame(history.rows(studio.baseline)).set_index("run")
    first = [c for c in table.columns if c.startswith("accuracy (") or c in ("LRS", "ARS")]
    table = table[["method", "ipc", *first, *[c for c in table.columns if c not in ("method", "ipc", *first)]]]
    st.dataframe(table, width="stretch", column_config={c: st.column_config.NumberColumn(c, pinned=True) for c in first})
    if scores_pending and run.scores_job.done:
        st.rerun()   # the scores are in: the page is drawn once more, now without the timer


run_table()
dropped = history.next_id - 1 - len(history.runs)
st.caption(f"Accuracies: test %, latest student of each protocol (Evaluate page); LRS / ARS: DD-Ranking scores "
           f"(0–100) against the benchmark's random real images, for ConvNet-3 students with the benchmark's epochs "
           f"(ARS 26.9: no better than random; LRS needs soft-online, ARS hard and hard-dsa). This session keeps "
           f"its latest {history.limit} runs" + (f"; {dropped} older run(s) were dropped." if dropped else "."))
ids = [r.run_id for r in history.runs]
if len(ids) >= 2:
    a_col, b_col = st.columns(2)
    a = a_col.selectbox("Compare run", ids, index=len(ids) - 2, key="compare_a")
    b = b_col.selectbox("with run", ids, index=len(ids) - 1, key="compare_b")
    runs = {f"run {i}": history.get(i) for i in dict.fromkeys([a, b])}
    series = {name: [r.coverage.per_class.get(c, 0.0) for c in range(len(names))]
              for name, r in runs.items() if r.coverage is not None}
    if series:
        st.plotly_chart(coverage_bars(series, names), width="stretch", key="coverage_bars")
    st.dataframe(pd.DataFrame(history.compare(a, b, studio.baseline)).set_index("field").astype(str), width="stretch")
elif run.coverage is not None:
    st.plotly_chart(coverage_bars({f"run {run.run_id}": [run.coverage.per_class.get(c, 0.0) for c in range(len(names))]},
                                  names), width="stretch", key="coverage_bars")
    st.caption("Change a setting in the sidebar to add a second run, then compare the two here.")
