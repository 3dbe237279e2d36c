"""Evaluate: train students only on the current set and test them on the real test split (DESIGN.md
protocol); the result joins the run history."""
import streamlit as st

from core.config import PROTOCOLS, STUDENT_ARCHITECTURES
from core.evaluation.students import EvaluationCancelled, protocol_config
from core.studio.session import evaluate_run
from ui.frame import page_frame
from ui.widgets import require_run

studio, _ = page_frame()
run = require_run()
st.title("Evaluate")
if studio.test is None:
    st.info("Students are tested on the real test split of the embedded default; this data has none here. "
            "Export the set and score it with `python -m core evaluate` where its test split is available.")
    st.stop()
st.caption(f"Run {run.run_id}: {len(run.dset)} images. Protocol: ConvNet-3 (width 128, instance norm), SGD lr 0.01, "
           "momentum 0.9, wd 5e-4, lr × 0.1 at half. On 2 CPU cores IPC 10 × 300 epochs takes about a minute per seed.")
cols = st.columns(4)
protocol = cols[0].selectbox("Protocol", tuple(PROTOCOLS), key="eval_protocol",
                             help="hard: cross-entropy, no augmentation; hard-dsa: hard labels, DSA on every batch; "
                                  "soft: the teacher's outputs on the images, once; soft-online: the teacher labels "
                                  "every augmented batch")
architecture = cols[1].selectbox("Student", STUDENT_ARCHITECTURES, key="eval_arch",
                                 help="convnet: ConvNet-3, the protocol (LRS / ARS compare it); resnet / resnet-bn: "
                                      "ResNet-10-style (instance / batch norm); mlp: two hidden layers of 128 units")
epochs = cols[2].number_input("Epochs", 1, 1000, 300, key="eval_epochs")
seeds = cols[3].number_input("Seeds", 1, 10, 1, key="eval_seeds")
use_weights = st.checkbox("Use the set's per-image weights (DDOQ cell masses)", True, key="eval_weights")

start, cancel = st.columns([1, 1])
if start.button("Start evaluation", type="primary"):
    st.session_state["eval_cancelled"] = False
    config = protocol_config(protocol, architecture=architecture, epochs=int(epochs), seeds=tuple(range(int(seeds))),
                             use_weights=use_weights)
    # Cancelling: the button below triggers a rerun, which stops this script at its next progress update;
    # the flag covers the case where the stop arrives between updates.
    cancel.button("Cancel", on_click=lambda: st.session_state.update(eval_cancelled=True, eval_message="Evaluation cancelled."))
    bar = st.progress(0.0, text="starting…")
    try:
        result = evaluate_run(studio, run, config, lambda f, m: bar.progress(min(1.0, f), text=m),
                              should_stop=lambda: st.session_state.get("eval_cancelled", False))
        st.session_state["eval_message"] = (f"Run {run.run_id}, protocol {protocol}: test accuracy "
                                            f"{100 * result.mean:.2f} ± {100 * result.std:.2f}% over {len(result.accuracies)} seed(s).")
    except EvaluationCancelled:
        st.session_state["eval_message"] = "Evaluation cancelled."
    bar.empty()
if st.session_state.get("eval_message"):
    st.success(st.session_state["eval_message"])
if run.evaluations:
    st.subheader(f"Evaluations of run {run.run_id}")
    st.dataframe(run.evaluations, width="stretch")
