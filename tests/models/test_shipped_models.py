"""The shipped weights of the embedded default load and reproduce the metrics recorded beside them."""
import pytest

from core.config import ASSETS, TEACHER_DIR, VAE_DIR
from core.data.datasets import load_fashion_mnist
from core.evaluation.quality import flow_quality
from core.models.loading import load_flow_for, load_teacher, load_vae
from core.models.spec import ModelSpec
from core.models.vae import measure_vae
from core.reads import read_json


@pytest.fixture(scope="module")
def test_split():
    return load_fashion_mnist("test")


@pytest.fixture(scope="module")
def spec():
    return ModelSpec()


def test_vae_reproduces_recorded_psnr(spec, test_split):
    recorded = read_json(VAE_DIR / "training.json")["metrics"]
    vae = load_vae(spec)
    assert vae.latent_shape(32) == (4, 8, 8)
    measured = measure_vae(vae, test_split)
    assert measured["test_psnr_db"] == pytest.approx(recorded["test_psnr_db"], abs=0.05)
    assert measured["test_psnr_db"] >= 24.0
    # the scaling makes latents roughly standardised
    assert abs(measured["latent_mean"]) < 0.1 and 0.8 < measured["latent_std"] < 1.2


def test_teacher_reproduces_recorded_accuracy(spec, test_split):
    recorded = read_json(TEACHER_DIR / "training.json")["metrics"]["test_accuracy"]
    teacher = load_teacher(spec)
    accuracy = teacher.accuracy(test_split)
    assert accuracy == pytest.approx(recorded, abs=0.002)
    assert accuracy >= 0.92
    assert teacher.features(test_split.batch(slice(0, 3))).shape == (3, 2048)


def test_flow_reproduces_recorded_conditional_accuracy(spec, test_split):
    recorded = read_json(ASSETS / "metrics.json")["flow_cfg_sweep"]["2.0"]  # written by `eval-models --json`
    vae, teacher = load_vae(spec), load_teacher(spec)
    flow = load_flow_for(spec, vae.latent_shape(32), test_split.num_classes)
    assert flow.config.extra["vae_fingerprint"] == vae.fingerprint, "flow model was trained on another VAE"
    q = flow_quality(flow, vae, teacher, test_split, per_class=100, cfg_scale=2.0, seed=0)
    assert q["conditional_accuracy"] == pytest.approx(recorded, abs=0.02)
    assert q["fid_teacher_generated_vs_test"] > 0


def test_flow_rejects_data_of_another_shape(spec):
    from core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="classes"):
        load_flow_for(spec, (4, 8, 8), 7)
    with pytest.raises(CheckpointError, match="shape"):
        load_flow_for(spec, (4, 32, 32), 10)


def test_solvers_converge_at_their_order_on_the_shipped_flow(spec):
    """Error against torchdiffeq dopri5 shrinks at each solver's order as steps double (unguided).

    The trained field is stiff near the data end (t -> 1), so the asymptotic order shows from ~64 steps on
    (`python -m core bench-engine` prints the whole curve from 8 steps)."""
    from core.evaluation.reports import solver_order_report

    flow = load_flow_for(spec, (4, 8, 8), 10)
    report = solver_order_report(flow, n=4, steps=(64, 128), rtol=1e-9)
    for solver, r in report.items():
        assert r["rms_error"][1] < r["rms_error"][0], solver
        assert r["observed_order"][0] > r["nominal_order"] - 0.5, (solver, r)


def test_diffusion_counterpart_samples_are_recognisable(spec, test_split):
    """Guards the DDIM first-step x̂_0 blow-up (ᾱ_999 ≈ 2e-9): samples must stay in range and classifiable."""
    import torch

    from core.config import DiffusionSamplerConfig
    from core.models.loading import load_diffusion
    from core.transport.ddim import sample_diffusion

    recorded = read_json(ASSETS / "metrics.json")["diffusion"]["10"]["conditional_accuracy"]
    vae, teacher = load_vae(spec), load_teacher(spec)
    model = load_diffusion(spec.diffusion, latent_shape=(4, 8, 8), num_classes=10)
    labels = torch.arange(10).repeat_interleave(20)
    latents = sample_diffusion(model, labels, None, DiffusionSamplerConfig(steps=10, cfg_scale=2.0, seed=0)).latents
    assert latents.abs().max() < 10
    accuracy = (teacher.logits(vae.decode(latents)).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9 and accuracy == pytest.approx(recorded, abs=0.06)
