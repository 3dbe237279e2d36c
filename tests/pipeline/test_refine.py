"""Distribution-matching refinement (core.pipeline.refine) and its place in distill."""
import numpy as np
import pytest
import torch

from core.config import DistillConfig, RefineConfig
from core.pipeline.distill import LocalExecutor, distill
from core.pipeline.refine import refine_set

STRIPES = torch.sin(torch.arange(16).float() * 1.5)
PATTERNS = {0: STRIPES.view(1, 1, 16).expand(1, 16, 16), 1: STRIPES.view(1, 16, 1).expand(1, 16, 16)}


def pattern_score(images: torch.Tensor, labels: np.ndarray) -> float:
    """How much of its class's stripe pattern each image holds, summed over the classes."""
    return sum(float((images[labels == c] * p).mean()) for c, p in PATTERNS.items())


def striped(c: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Real images of class c: vertical (0) or horizontal (1) stripes, plus noise."""
    noise = torch.from_numpy(rng.standard_normal((n, 1, 16, 16))).float()
    return (0.8 * PATTERNS[c] + 0.1 * noise).clamp(-1, 1)


def test_pixel_refinement_moves_each_class_toward_its_real_images():
    labels = np.repeat([0, 1], 4)
    start = 0.1 * torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    config = RefineConfig(iterations=40, space="pixel", lr=1.0, real_batch=16, width=8)
    result = refine_set(start, labels, lambda x: x, striped, config, seed=0)
    assert pattern_score(result.images, labels) > 4 * max(pattern_score(start, labels), 0.01)
    assert torch.equal(result.latents, start)       # pixel space leaves the latents alone
    assert result.images.min() >= -1 and result.images.max() <= 1 and len(result.losses) == 40
    again = refine_set(start, labels, lambda x: x, striped, config, seed=0)
    assert torch.equal(again.images, result.images)  # the seed fixes every draw


def test_pixel_refinement_starts_from_each_image_decoded_in_place():
    labels = np.array([1, 0, 1, 0, 0])     # classes interleaved: decoded class by class, put back in order
    start = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    calls = []

    def decode(x):
        calls.append(len(x))
        return torch.tanh(x)

    config = RefineConfig(iterations=0, space="pixel", real_batch=4, width=8)
    result = refine_set(start, labels, decode, striped, config, seed=0)
    assert torch.allclose(result.images, torch.tanh(start))   # no step: the starting images, each in its place
    assert sorted(calls[:2]) == [2, 3]                         # one decode per class, not the whole set


def test_latent_refinement_optimises_through_the_decoder(tiny_vae):
    labels = np.repeat([0, 1], 3)
    latents = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    config = RefineConfig(iterations=30, space="latent", lr=0.1, real_batch=8, width=8)
    result = refine_set(latents, labels, tiny_vae.decode_with_grad, striped, config, seed=1)
    assert not torch.equal(result.latents, latents) and result.images is None   # the latents are the result
    assert pattern_score(tiny_vae.decode(result.latents), labels) > pattern_score(tiny_vae.decode(latents), labels)


def test_distill_refines_the_sampled_set(engine):
    plain = distill(engine, DistillConfig(method="pgfm", ipc=2, seed=0))
    refine = RefineConfig(iterations=3, space="latent", lr=0.05, real_batch=8, width=8)
    heard = []
    refined = distill(engine, DistillConfig(method="pgfm", ipc=2, seed=0, refine=refine),
                      progress=lambda fraction, message: heard.append((fraction, message)))
    assert not torch.equal(refined.latents, plain.latents) and refined.timings["refine_s"] > 0
    assert heard[-1][0] == 1.0 and "iteration 3/3" in heard[-1][1]
    assert torch.allclose(refined.images, engine.vae.decode(refined.latents), atol=1e-5)
    pixel = DistillConfig(method="pgfm", ipc=2, seed=0, refine=RefineConfig(iterations=2, space="pixel", width=8))
    exported = distill(engine, pixel, executor=LocalExecutor(pixels="uint8"))
    assert exported.images.dtype == torch.uint8 and torch.equal(exported.latents, plain.latents)


def test_a_projection_takes_the_refined_latents_back_through_the_flow(engine):
    from dataclasses import replace

    from core.config import GuidanceConfig
    from core.transport.sampler import sample

    refine = RefineConfig(iterations=2, space="latent", lr=0.05, real_batch=8, width=8)
    refined = distill(engine, DistillConfig(method="pgfm", ipc=2, seed=0, refine=refine))
    config = DistillConfig(method="pgfm", ipc=2, seed=0, refine=replace(refine, project_t=0.5))
    projected = distill(engine, config)
    # the refinement is the same, then the unguided flow from t = 0.5: x = 0.5·refined + 0.5·noise(seed) → t = 1
    sampler = replace(config.sampler, seed=0, t0=0.5, guidance=GuidanceConfig(strength=0.0))
    expected = sample(engine.flow, torch.from_numpy(refined.labels), refined.latents, sampler).latents
    assert torch.allclose(projected.latents, expected, atol=1e-5) and not torch.allclose(projected.latents, refined.latents)
    assert projected.nfe == refined.nfe + sampler.nfe
    assert torch.allclose(projected.images, engine.vae.decode(projected.latents), atol=1e-5)
    assert np.isfinite(projected.landing_error).all()   # still measured against the set's prototypes


def test_refine_settings_are_checked_and_keep_earlier_hashes():
    assert "refine" not in DistillConfig().to_dict()   # off: the config hash of earlier results is unchanged
    config = DistillConfig(refine=RefineConfig(iterations=5, space="pixel"))
    assert DistillConfig.from_dict(config.to_dict()) == config
    assert "objective" not in config.to_dict()["refine"]   # the default objective: pgfm-dm's cells keep their keys
    mmd = DistillConfig(refine=RefineConfig(iterations=5, objective="mmd"))
    assert mmd.to_dict()["refine"]["objective"] == "mmd" and DistillConfig.from_dict(mmd.to_dict()) == mmd
    assert "project_t" not in config.to_dict()["refine"]   # no projection: the keys of earlier cells again
    assert "embedding" not in config.to_dict()["refine"]   # random networks, DM's: the keys of earlier cells again
    assert "boundary" not in config.to_dict()["refine"]    # no boundary term: the keys of earlier cells again
    projected = DistillConfig(refine=RefineConfig(iterations=5, project_t=0.8))
    assert projected.to_dict()["refine"]["project_t"] == 0.8 and DistillConfig.from_dict(projected.to_dict()) == projected
    for bad in (dict(space="image"), dict(iterations=-1), dict(lr=0.0), dict(real_batch=0), dict(width=True),
                dict(objective="cosine"), dict(project_t=1.0), dict(project_t=float("nan")),
                dict(space="pixel", project_t=0.5), dict(iterations=0, project_t=0.5), dict(embedding="vgg"),
                dict(iterations=0, embedding="teacher"), dict(boundary=1.0), dict(boundary=-1.0, embedding="teacher"),
                dict(boundary=float("nan"), embedding="teacher"), dict(boundary=True, embedding="teacher")):
        with pytest.raises(ValueError, match="refine"):
            RefineConfig(**{"iterations": 1, **bad})
    with pytest.raises(ValueError, match="project_t integrates the flow model"):
        DistillConfig(method="d4m", refine=RefineConfig(iterations=1, project_t=0.5))
    with pytest.raises(ValueError, match="random keeps its real images"):
        DistillConfig(method="random", refine=RefineConfig(iterations=1))


def test_the_distill_options_describe_a_refinement():
    from core.config import DEFAULT_REFINE, REFINE_LR, distill_config

    assert distill_config({"refine": 0}).refine == RefineConfig()
    latent = distill_config({"refine": 7, "refine_space": "latent"}).refine
    assert latent == RefineConfig(iterations=7, space="latent", lr=REFINE_LR["latent"],
                                  real_batch=DEFAULT_REFINE.real_batch, width=DEFAULT_REFINE.width)
    with pytest.raises(ValueError, match="refine space"):
        distill_config({"refine": 3, "refine_space": "image"})
    assert distill_config({"refine": 3, "refine_objective": "mmd"}).refine.objective == "mmd"
    with pytest.raises(ValueError, match="refine_objective 'mmd' changes a refinement, but none is asked for"):
        distill_config({"refine_objective": "mmd"})   # would be silently ignored
    assert distill_config({"refine_objective": "mean", "refine_space": "latent"}).refine == RefineConfig()   # defaults
    assert distill_config({"refine": 3, "refine_project_t": 0.9}).refine.project_t == 0.9
    with pytest.raises(ValueError, match="refine_project_t 0.9 changes a refinement"):
        distill_config({"refine_project_t": 0.9})
    assert distill_config({"refine": 3, "refine_embedding": "teacher", "refine_boundary": 2.0}).refine.boundary == 2.0
    with pytest.raises(ValueError, match="boundary weighs the teacher's uncertainty"):
        distill_config({"refine": 3, "refine_boundary": 2.0})


def test_the_mmd_term_is_zero_only_for_matching_batches_and_pulls_the_spread():
    from core.pipeline.refine import gaussian_mmd2

    g = torch.Generator().manual_seed(0)
    target = torch.randn(64, 5, generator=g)
    assert float(gaussian_mmd2(target, target)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(16, 5, generator=g) + 1.0
    # squared-distance units: scaling both sets by c scales it by c², so it adds to the mean term consistently
    assert float(gaussian_mmd2(3 * other, 3 * target)) == pytest.approx(9 * float(gaussian_mmd2(other, target)), rel=1e-4)
    collapsed = target.mean(0, keepdim=True).repeat(8, 1).requires_grad_(True)   # right mean, no spread
    loss = gaussian_mmd2(collapsed, target)
    loss.backward()
    assert float(loss.detach()) > 0.05 and collapsed.grad.abs().sum() > 0
    assert float(gaussian_mmd2(target[:8], target)) < float(loss.detach())   # real rows: a much smaller MMD


def test_the_mmd_objective_adds_the_mmd_term_to_the_mean_term():
    from core.data.augment import dsa_augment
    from core.models.convnet import ConvNet, ConvNetConfig
    from core.pipeline.refine import class_match_loss, gaussian_mmd2

    embed = ConvNet(ConvNetConfig(in_channels=1, num_classes=2, image_size=8, width=8, depth=2))
    real, synthetic = torch.rand(12, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1
    losses = {o: class_match_loss(embed, real, synthetic, "flip", torch.Generator().manual_seed(1), o)
              for o in ("mean", "mmd")}
    g = torch.Generator().manual_seed(1)   # the same draws as class_match_loss: real first, then synthetic
    real_aug, synthetic_aug = dsa_augment(real, g, "flip"), dsa_augment(synthetic, g, "flip")
    with torch.no_grad():
        mmd = gaussian_mmd2(embed.features(synthetic_aug), embed.features(real_aug))
    assert float(losses["mmd"]) == pytest.approx(float(losses["mean"] + mmd), rel=1e-4)


def test_mmd_refinement_keeps_the_set_more_spread_than_mean_matching():
    """Both objectives move a collapsed class toward its real images; the MMD one also spreads it out."""
    g = torch.Generator().manual_seed(0)
    labels = np.zeros(6, dtype=int)
    start = torch.zeros(6, 1, 8, 8)

    def real_images(c, n, rng):
        return torch.from_numpy(rng.uniform(-1, 1, size=(n, 1, 8, 8)).astype(np.float32))

    start = start + 0.01 * torch.randn(start.shape, generator=g)   # the same start for both objectives
    spreads = {}
    for objective in ("mean", "mmd"):
        config = RefineConfig(iterations=30, space="pixel", lr=1.0, real_batch=32, width=8, objective=objective)
        result = refine_set(start, labels, lambda x: x, real_images, config, seed=0)
        assert np.isfinite(result.losses).all()
        spreads[objective] = float(result.images.flatten(1).std(0).mean())
    assert spreads["mmd"] > 1.5 * spreads["mean"]


class CountingConvNet(torch.nn.Module):
    """A frozen ConvNet-3 that counts the calls of its ``features`` (in the class: a refinement works on a copy)."""

    calls = 0

    def __init__(self, channels: int, classes: int, size: int):
        super().__init__()
        from core.models.convnet import ConvNet, ConvNetConfig

        torch.manual_seed(3)
        self.net = ConvNet(ConvNetConfig(channels, classes, size, width=8)).eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return self.net.features(x)


def test_a_teacher_embedding_matches_in_the_teachers_features_every_iteration():
    labels = np.repeat([0, 1], 4)
    start = 0.1 * torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    config = RefineConfig(iterations=30, space="pixel", lr=1.0, real_batch=16, embedding="teacher")
    teacher, CountingConvNet.calls = CountingConvNet(1, 2, 16), 0
    result = refine_set(start, labels, lambda x: x, striped, config, seed=0, teacher=teacher)
    assert CountingConvNet.calls == 30 * 2 * 2                     # real and set batch of both classes, every iteration
    assert result.losses[-5:].mean() < result.losses[:5].mean()   # the teacher-feature gap shrinks
    random_nets = refine_set(start, labels, lambda x: x, striped, RefineConfig(iterations=30, space="pixel", lr=1.0,
                                                                            real_batch=16, width=8), seed=0)
    assert not torch.allclose(result.images, random_nets.images)   # another embedding, another set
    with pytest.raises(ValueError, match="needs a teacher network"):
        refine_set(start, labels, lambda x: x, striped, config, seed=0)


def test_distill_refines_with_the_engines_teacher_and_refuses_without_one(engine):
    from dataclasses import replace

    from core.models.convnet import ConvNet, ConvNetConfig
    from core.models.teacher import Teacher

    refine = RefineConfig(iterations=2, space="latent", lr=0.05, real_batch=8, embedding="teacher")
    config = DistillConfig(method="pgfm", ipc=2, seed=0, refine=refine)
    with pytest.raises(ValueError, match="needs a teacher"):
        distill(engine, config)
    torch.manual_seed(0)
    teacher = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))
    refined = distill(replace(engine, teacher=teacher), config)
    plain = distill(engine, DistillConfig(method="pgfm", ipc=2, seed=0))
    assert not torch.equal(refined.latents, plain.latents) and np.isfinite(refined.latents.numpy()).all()
    other = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))   # other weights: another embedding, other latents
    assert not torch.allclose(distill(replace(engine, teacher=other), config).latents, refined.latents)
    assert all(p.grad is None for p in teacher.net.parameters())   # the caller's teacher is left alone
    assert config.to_dict()["refine"]["embedding"] == "teacher"
    wrong = Teacher(ConvNet(ConvNetConfig(1, 5, 32, width=8)))   # five classes: not this data's teacher
    with pytest.raises(ValueError, match="does not fit this data"):
        distill(replace(engine, teacher=wrong), config)


def test_the_boundary_term_adds_the_teachers_negative_entropy_and_moves_the_set_where_it_is_unsure():
    from core.config import SOFT_TEMPERATURE
    from core.data.augment import dsa_augment
    from core.models.convnet import ConvNet, ConvNetConfig
    from core.pipeline.refine import class_match_loss

    torch.manual_seed(3)
    teacher = ConvNet(ConvNetConfig(1, 2, 16, width=8)).eval().requires_grad_(False)
    teacher.classifier.weight.mul_(30)   # a confident teacher, as a trained one is: far from the uniform output
    real, synthetic = striped(0, 12, np.random.default_rng(0)), striped(0, 4, np.random.default_rng(1))
    plain, bounded = (class_match_loss(teacher, real, synthetic, "flip", torch.Generator().manual_seed(1),
                                       "mean", beta) for beta in (0.0, 2.0))
    g = torch.Generator().manual_seed(1)   # the same draws as class_match_loss: real first, then synthetic
    dsa_augment(real, g, "flip")
    log_p = torch.log_softmax(teacher(dsa_augment(synthetic, g, "flip")) / SOFT_TEMPERATURE, 1)
    assert float(bounded) == pytest.approx(float(plain + 2.0 * (log_p.exp() * log_p).sum(1).mean()), rel=1e-4)

    def entropy(images):
        log_q = torch.log_softmax(teacher(images) / SOFT_TEMPERATURE, 1)
        return float(-(log_q.exp() * log_q).sum(1).mean())

    labels = np.repeat([0, 1], 4)
    start = torch.cat([striped(0, 4, np.random.default_rng(2)), striped(1, 4, np.random.default_rng(3))])
    sets = {beta: refine_set(start, labels, lambda x: x, striped, RefineConfig(
        iterations=20, space="pixel", lr=1.0, real_batch=16, embedding="teacher", boundary=beta), seed=0,
        teacher=teacher).images for beta in (0.0, 5.0)}
    assert entropy(sets[5.0]) > entropy(sets[0.0]) + 0.3   # about 0.08 nats without the term, 0.68 with it (of log 2)
