"""Evaluate: train students only on the current set and test them on the real test split (DESIGN.md
protocols); the result joins the run's history. The student trains in a background job of this session:
it keeps going while the researcher visits other pages, and the page's settings stay as they were left."""
import streamlit as st

from core.config import PROTOCOLS, STUDENT_ARCHITECTURES
from core.evaluation.students import EvaluationCancelled, protocol_config
from core.studio.jobs import BackgroundJob
from core.studio.session import accuracy_text, evaluate_run, evaluation_rows
from ui.frame import page_frame
from ui.widgets import job_progress, keep_values, require_run

SETTINGS = {"eval_protocol": "hard", "eval_arch": "convnet", "eval_epochs": 300, "eval_seeds": 1, "eval_weights": True}

studio, _ = page_frame()
run = require_run()
st.title("Evaluate")
if studio.test is None:
    st.info("Students are tested on a real test split and, for the soft protocols, labelled by a teacher of the "
            "data: this data has none here. Use the embedded default, or a model folder made by `python -m core "
            "prepare` of a dataset with a test split (ROOT/test or ROOT/val); or export the set and score it with "
            "`python -m core evaluate` where its test split is available.")
    st.stop()
keep_values(SETTINGS)
job: BackgroundJob | None = st.session_state.get("eval_job")
busy = job is not None and not job.done
st.caption(f"Run {run.run_id}: {len(run.dset)} images, tested on {studio.test.name} ({len(studio.test)} real "
           "images). Protocol: ConvNet-3 (width 128, instance norm), SGD lr 0.01, "
           "momentum 0.9, wd 5e-4, lr × 0.1 at half. On 2 CPU cores IPC 10 × 300 epochs takes about a minute per seed; "
           "the student keeps training while you visit other pages.")
cols = st.columns(4)
protocol = cols[0].selectbox("Protocol", tuple(PROTOCOLS), key="eval_protocol", disabled=busy,
                             help="hard: cross-entropy, no augmentation; hard-dsa: hard labels, DSA on every batch; "
                                  "soft: the teacher's outputs on the images, once; soft-online: the teacher labels "
                                  "every augmented batch")
architecture = cols[1].selectbox("Student", STUDENT_ARCHITECTURES, key="eval_arch", disabled=busy,
                                 help="convnet: ConvNet-3, the protocol (LRS / ARS compare it); resnet / resnet-bn: "
                                      "ResNet-10-style (instance / batch norm); mlp: two hidden layers of 128 units")
epochs = cols[2].number_input("Epochs", 1, 1000, key="eval_epochs", disabled=busy,
                              help="training epochs per student (the protocol: 300); lr × 0.1 at half")
seeds = cols[3].number_input("Seeds", 1, 10, key="eval_seeds", disabled=busy,
                             help="students trained with seeds 0..n-1; the result is their mean ± std")
use_weights = st.checkbox("Use the set's per-image weights (DDOQ cell masses)", key="eval_weights", disabled=busy)

if st.button("Start evaluation", type="primary", disabled=busy):
    config = protocol_config(protocol, architecture=architecture, epochs=int(epochs), seeds=tuple(range(int(seeds))),
                             use_weights=use_weights)
    def train(progress, target=run, config=config):   # bound now: the job outlives this script run
        return evaluate_run(studio, target, config, progress, should_stop=lambda: job.cancelled)

    job = BackgroundJob(train, name="student")
    job.run_id, job.protocol, job.seeds = run.run_id, config.protocol, len(config.seeds)
    st.session_state["eval_job"] = job.start()
    busy = True


@st.fragment(run_every=1.0 if busy else None)
def job_status() -> None:
    """The student job's progress and ETA, refreshed every second while it runs; its outcome once done."""
    job: BackgroundJob | None = st.session_state.get("eval_job")
    if job is None:
        return
    if job_progress(job, f"Run {job.run_id}, {job.protocol}", "eval_cancel"):
        return
    if isinstance(job.error, EvaluationCancelled):
        st.warning(f"Evaluation cancelled ({job.error}); nothing was recorded.")
    elif job.error is not None:
        st.error(f"The evaluation of run {job.run_id} failed: {job.error}")
    elif job.run_id == run.run_id:
        st.success(f"Run {job.run_id}, protocol {job.protocol}: test accuracy "
                   f"{accuracy_text(job.result.mean, job.result.std, job.seeds)}.")
    else:
        st.info(f"The last evaluation was of run {job.run_id} (its result is in that run's history on the "
                f"Coverage page); this is run {run.run_id}.")


job_status()
if run.evaluations:
    st.subheader(f"Evaluations of run {run.run_id}")
    st.dataframe(evaluation_rows(run), width="stretch", hide_index=True)
