"""Runs: this browser's runs and the command line's (distill / evaluate, the benchmark's cells) from the run
registry, sortable and filterable, with pin / tag / delete of this browser's own runs (the command line's are
read-only; other browsers' are not shown), a CSV download, an N-way overlay of per-class coverage and
accuracy, and "same settings as run N" for the sidebar."""
import pandas as pd
import streamlit as st

from core.studio.figures import coverage_bars
from core.studio.runs import differing_columns, sidebar_settings, table_rows
from ui.frame import page_frame

studio, _ = page_frame()
st.title("Runs")
registry = studio.registry
if registry is None:
    st.info("No run registry: the registry file could not be used (the sidebar says why), so nothing is "
            "recorded. Point $DISTILL_REGISTRY at a new file and restart the app.")
    st.stop()
if st.session_state.pop("go_sampling", False):   # set by "same settings": show the re-created set
    st.switch_page("pages/sampling.py")

runs = registry.runs()
rows = table_rows(runs, registry.owner)
st.caption(f"{len(rows)} runs: this browser's and the command line's (`python -m core distill / evaluate / bench`, "
           "read-only here); other browsers' runs are not shown. Click a column header to sort. Highlighted: "
           "settings that differ between the runs shown.")
if not rows:
    st.info("No runs yet.")
    st.stop()
cols = st.columns(3)
kinds = cols[0].multiselect("Kind", sorted({r["kind"] for r in rows}), key="runs_kinds", help="where the run came from")
methods = cols[1].multiselect("Method", sorted({str(r["method"]) for r in rows if r["method"]}), key="runs_methods",
                              help="distillation method")
tag = cols[2].text_input("Tag contains", key="runs_tag", help="keep runs with a tag containing this text")
shown = [r for r in rows if (not kinds or r["kind"] in kinds) and (not methods or str(r["method"]) in methods)
         and (not tag or tag in r["tags"])]
table = pd.DataFrame(shown).set_index("id")
accuracy = [c for c in table.columns if c.startswith("accuracy (")]
first = ["kind", "by", "pinned", *accuracy]
table = table[[*first, *[c for c in table.columns if c not in first]]]
differ = differing_columns(shown)
styled = table.style.apply(lambda col: ["background-color: #fff3b0" if col.name in differ else "" for _ in col])
st.dataframe(styled, width="stretch", height=min(600, 38 + 35 * len(table)),
             column_config={c: st.column_config.NumberColumn(c, pinned=True) for c in accuracy})
st.download_button("Download CSV", table.to_csv().encode(), file_name="runs.csv", mime="text/csv", key="runs_csv")

st.subheader("A run")
ids = [r["id"] for r in shown]
picked = st.selectbox("Run", ids, key="runs_pick", format_func=lambda i: f"run {i}")
row = next(r for r in runs if r["id"] == picked)
mine = registry.owns(row)
if not mine:
    st.caption(f"Run {picked} was recorded by the command line: read-only here (only this browser's own runs can "
               "be pinned, tagged or deleted).")
left, middle, right = st.columns(3)
if left.button("Unpin" if row["pinned"] else "Pin", key="runs_pin", disabled=not mine):
    registry.update(picked, pinned=not row["pinned"])
    st.rerun()
tags = middle.text_input("Tags (comma-separated)", ", ".join(row["tags"]), key=f"runs_tags_{picked}", disabled=not mine)
if middle.button("Save tags", key="runs_save_tags", disabled=not mine):
    registry.update(picked, tags=[t.strip() for t in tags.split(",") if t.strip()])
    st.rerun()
settings = sidebar_settings(row, list(studio.engine.latents.class_names))


def apply_settings() -> None:   # a callback: runs before the sidebar's widgets exist, so it may set them
    st.session_state.update(settings, auto_apply=True, go_sampling=True)


right.button("Same settings as this run", key="runs_same", disabled=settings is None, on_click=apply_settings,
             help="put this run's settings in the sidebar and show its set (same seed: the same images)")
confirm = right.checkbox("I want to delete this run", key=f"runs_confirm_{picked}", disabled=not mine)
if right.button("Delete run", key="runs_delete", disabled=not confirm,
                help="removes the registry's record and evaluations; an export it points to is left alone"):
    registry.delete(picked)
    st.rerun()

st.subheader("Compare runs")
chosen = st.multiselect("Runs to overlay", ids, default=ids[:min(3, len(ids))], key="runs_compare",
                        format_func=lambda i: f"run {i}")
names = studio.engine.latents.class_names
series = {f"run {r['id']}": [r["metrics"]["mode_coverage_per_class"].get(str(c), 0.0) for c in range(len(names))]
          for r in runs if r["id"] in chosen and isinstance(r["metrics"].get("mode_coverage_per_class"), dict)}
if series:
    st.plotly_chart(coverage_bars(series, names), width="stretch", key="runs_coverage")
accuracies = pd.DataFrame([{"run": f"run {r['id']}", "protocol": e["protocol"], "test accuracy (%)": 100 * e["accuracy_mean"]}
                           for r in runs if r["id"] in chosen for e in r["evaluations"] if e["split"] == "test"])
if not accuracies.empty:
    st.bar_chart(accuracies, x="protocol", y="test accuracy (%)", color="run", stack=False)
