"""Metrics of DESIGN.md section 4: PRDC against a brute-force reference, mode coverage, diversity, landing error."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import core.evaluation.metrics as metrics
from core.evaluation.metrics import (
    ClassModes,
    diversity,
    fit_modes,
    frechet_distance,
    landing_errors,
    mode_coverage,
    prdc,
    real_radii,
)
from core.transport.guidance import rms_distance

# --------------------------------------------------------------------------------------------- PRDC

def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[dict[str, float], float]:
    """Naeem et al. 2020 with explicit loops in float64; also returns the smallest relative margin
    |d - radius| / radius over all comparisons (to know that float32 rounding cannot flip any of them)."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)

    def radii(x):
        d = cdist(x, x)
        return np.array([np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))])

    r, s, d = radii(real), radii(fake), cdist(real, fake)
    n, m = d.shape
    precision = np.mean([any(d[i, j] < r[i] for i in range(n)) for j in range(m)])
    recall = np.mean([any(d[i, j] < s[j] for j in range(m)) for i in range(n)])
    density = np.mean([sum(d[i, j] < r[i] for i in range(n)) for j in range(m)]) / k
    coverage = np.mean([min(d[i, j] for j in range(m)) < r[i] for i in range(n)])
    margin = min(np.abs(d / r[:, None] - 1).min(), np.abs(d / s[None, :] - 1).min())
    return dict(precision=precision, recall=recall, density=density, coverage=coverage), margin


@pytest.mark.parametrize("seed,k", [(0, 5), (1, 3), (2, 1)])
def test_prdc_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(120, 16)).astype(np.float32)
    fake = (0.6 + 1.3 * rng.normal(size=(90, 16))).astype(np.float32)  # partly overlapping
    want, margin = brute_prdc(real, fake, k)
    assert margin > 1e-5  # no comparison near its threshold: float32 distances must agree exactly
    got = prdc(real, fake, k=k)
    assert set(got) == {"precision", "recall", "density", "coverage"}
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1 and 0 < got["coverage"] < 1
    # torch input and cached radii give the same numbers
    cached = real_radii(real, k)
    assert cached.shape == (120,) and cached.dtype == np.float32
    assert prdc(torch.from_numpy(real), torch.from_numpy(fake), k=k, real_radii=cached) == got


def test_real_radii_are_kth_neighbour_excluding_self():
    rng = np.random.default_rng(3)
    x = (5.0 + rng.normal(size=(60, 8))).astype(np.float32)  # offset: exercises the centring
    d = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    for k in (1, 2, 5):
        np.testing.assert_allclose(real_radii(x, k), np.sort(d, axis=1)[:, k - 1], rtol=1e-5)


def test_prdc_chunked_path_matches(monkeypatch):
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(70, 6)), rng.normal(0.3, 1.0, size=(40, 6))
    whole = prdc(real, fake)
    monkeypatch.setattr(metrics, "_row_chunk", lambda n_cols, budget=0: 7)
    assert prdc(real, fake) == whole
    np.testing.assert_array_equal(real_radii(real), metrics.real_radii(real))


def test_prdc_identical_and_far_apart_sets():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 32)).astype(np.float32)
    same = prdc(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.03)  # exactly 1 up to float32 ties
    far = prdc(x, x + 100.0)
    assert far == dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0)


def test_prdc_validation():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(20, 4)), rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="dimensions differ"):
        prdc(real, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="more than k"):
        prdc(real[:5], fake, k=5)
    with pytest.raises(ValueError, match="more than k"):
        prdc(real, fake[:3], k=5)
    with pytest.raises(ValueError, match="more than k"):
        real_radii(real[:5], 5)
    bad = fake.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prdc(real, bad)
    with pytest.raises(ValueError, match="2-D"):
        prdc(real.reshape(20, 2, 2), fake)
    with pytest.raises(ValueError, match="real_radii"):
        prdc(real, fake, real_radii=np.ones(19))
    with pytest.raises(ValueError, match="real_radii"):
        prdc(real, fake, real_radii=-np.ones(20))
    with pytest.raises(ValueError, match="k must"):
        prdc(real, fake, k=0)


# ------------------------------------------------------------------------------------- mode coverage

NUM_CLASSES, NUM_BLOBS, DIM = 3, 4, 8


def blob_centres() -> np.ndarray:
    """(classes, blobs, D): blob b of class c at 30·e_b + 100·c·e_7 (every pair >= 42 apart)."""
    centres = np.zeros((NUM_CLASSES, NUM_BLOBS, DIM))
    for c in range(NUM_CLASSES):
        for b in range(NUM_BLOBS):
            centres[c, b, b] = 30.0
            centres[c, b, DIM - 1] = 100.0 * c
    return centres


def blob_samples(rng, blobs, per_blob, std):
    feats, labels, which = [], [], []
    for c in range(NUM_CLASSES):
        for b in blobs:
            feats.append(blob_centres()[c, b] + std * rng.normal(size=(per_blob, DIM)))
            labels += [c] * per_blob
            which += [b] * per_blob
    return np.concatenate(feats).astype(np.float32), np.array(labels), np.array(which)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    feats, labels, which = blob_samples(rng, range(NUM_BLOBS), 60, 1.0)
    return fit_modes(feats, labels, num_modes=NUM_BLOBS, seed=0), feats, labels, which


def test_fit_modes_finds_blobs_and_95th_percentile_radii(fitted):
    modes, feats, labels, _ = fitted
    assert isinstance(modes, ClassModes) and modes.classes == (0, 1, 2) and modes.num_features == DIM
    for c in range(NUM_CLASSES):
        centres, radii = modes.centres[c], modes.radii[c]
        assert centres.shape == (NUM_BLOBS, DIM) and radii.shape == (NUM_BLOBS,)
        # each true blob centre has exactly one fitted centre close to it
        near = cdist(blob_centres()[c], centres).argmin(1)
        assert sorted(near) == list(range(NUM_BLOBS))
        assert cdist(blob_centres()[c], centres).min(1).max() < 1.0
        x = feats[labels == c].astype(np.float64)
        d = cdist(x, centres)
        member = d.argmin(1)
        for m in range(NUM_BLOBS):
            dist = d[member == m, m]
            assert radii[m] == pytest.approx(np.percentile(dist, 95), rel=1e-9)
            assert np.mean(dist <= radii[m]) >= 0.95
    # fixed seed: refitting gives the same modes
    again = fit_modes(feats, labels, num_modes=NUM_BLOBS, seed=0)
    for c in range(NUM_CLASSES):
        np.testing.assert_array_equal(again.centres[c], modes.centres[c])


def test_mode_coverage_all_half_and_none(fitted):
    modes = fitted[0]
    rng = np.random.default_rng(1)

    feats, labels, which = blob_samples(rng, range(NUM_BLOBS), 5, 0.1)
    full = mode_coverage(modes, feats, labels)
    assert full.overall == 1.0 and full.overall_all_classes == 1.0
    assert all(v.all() for v in full.covered.values()) and full.sample_covered.all()
    assert full.present_classes == (0, 1, 2)
    # per-sample mode ids: one fitted mode per true blob, within each class
    for c in range(NUM_CLASSES):
        pairs = {(b, m) for b, m in zip(which[labels == c], full.sample_mode[labels == c])}
        assert len(pairs) == NUM_BLOBS and len({m for _, m in pairs}) == NUM_BLOBS
    assert full.sample_distance.shape == (len(feats),) and (full.sample_distance < 1.0).all()

    feats, labels, _ = blob_samples(rng, [0, 2], 5, 0.1)
    half = mode_coverage(modes, torch.from_numpy(feats), torch.from_numpy(labels))
    assert half.overall == 0.5 and all(v == 0.5 for v in half.per_class.values())
    assert all(v.sum() == 2 for v in half.covered.values())

    far = mode_coverage(modes, feats + 1000.0, labels)
    assert far.overall == 0.0 and not far.sample_covered.any()
    assert far.sample_mode.min() >= 0 and far.sample_mode.max() < NUM_BLOBS


def test_mode_coverage_overall_is_over_present_classes(fitted):
    modes = fitted[0]
    rng = np.random.default_rng(2)
    feats, labels, _ = blob_samples(rng, range(NUM_BLOBS), 3, 0.1)
    only_one = labels == 1
    res = mode_coverage(modes, feats[only_one], labels[only_one])
    assert res.present_classes == (1,)
    assert res.overall == 1.0
    assert res.overall_all_classes == pytest.approx(1 / 3)
    assert res.per_class == {0: 0.0, 1: 1.0, 2: 0.0}
    # a sample in its class's blob but labelled as another class does not cover anything
    wrong = mode_coverage(modes, feats[only_one], np.zeros(only_one.sum(), dtype=int))
    assert wrong.overall == 0.0


def test_mode_coverage_requires_nearest_mode():
    """Inside mode 0's radius but closer to mode 1's centre: mode 1 (with a small radius) is the only candidate."""
    modes = ClassModes(centres={0: np.array([[0.0, 0.0], [3.0, 0.0]])}, radii={0: np.array([10.0, 0.5])},
                       num_features=2)
    res = mode_coverage(modes, np.array([[2.0, 0.0], [0.5, 0.0]]), np.array([0, 0]))
    np.testing.assert_array_equal(res.sample_mode, [1, 0])
    np.testing.assert_array_equal(res.sample_covered, [False, True])
    np.testing.assert_array_equal(res.covered[0], [True, False])
    assert res.overall == 0.5


def test_fit_modes_small_classes_use_fewer_modes():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(23, 5))
    labels = np.array([0] * 20 + [1] * 3)
    modes = fit_modes(feats, labels, num_modes=10)
    assert modes.centres[0].shape == (10, 5) and modes.centres[1].shape == (3, 5)
    np.testing.assert_allclose(modes.radii[1], 0.0, atol=1e-6)  # one member per mode
    single = fit_modes(feats[:1], [7], num_modes=10)
    assert single.centres[7].shape == (1, 5) and single.radii[7][0] == 0.0


def test_mode_coverage_validation(fitted):
    modes, feats, labels, _ = fitted
    with pytest.raises(ValueError, match="shape"):
        fit_modes(feats, labels[:-1])
    with pytest.raises(ValueError, match="num_modes"):
        fit_modes(feats, labels, num_modes=0)
    with pytest.raises(ValueError, match="integer class labels"):
        fit_modes(feats, labels + 0.5)
    bad = feats.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_modes(bad, labels)
    with pytest.raises(ValueError, match="dimensions differ"):
        mode_coverage(modes, feats[:, :4], labels)
    with pytest.raises(ValueError, match="no fitted modes"):
        mode_coverage(modes, feats[:2], [0, 9])
    with pytest.raises(ValueError, match="at least 1"):
        mode_coverage(modes, feats[:0], labels[:0])


# ------------------------------------------------------------------------ diversity, landing, Fréchet

def test_diversity_known_configurations():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert diversity(square) == pytest.approx((4 + 2 * math.sqrt(2)) / 6)
    images = torch.zeros(4, 1, 2, 2)  # the same square, embedded in (N, C, H, W)
    images[:, 0, 0, 0] = torch.tensor(square[:, 0], dtype=torch.float32)
    images[:, 0, 1, 1] = torch.tensor(square[:, 1], dtype=torch.float32)
    assert diversity(images) == pytest.approx((4 + 2 * math.sqrt(2)) / 6)
    assert diversity(np.ones((5, 3))) == 0.0
    with pytest.raises(ValueError):
        diversity(np.ones((1, 3)))
    with pytest.raises(ValueError):
        diversity(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_landing_errors_in_rms_units():
    x = torch.zeros(3, 4, 2, 2)
    p = torch.full((3, 4, 2, 2), 2.0)
    p[1] = 0.0
    err = landing_errors(x, p)
    assert isinstance(err, torch.Tensor) and err.shape == (3,)
    torch.testing.assert_close(err, torch.tensor([2.0, 0.0, 2.0]))
    torch.testing.assert_close(err, rms_distance(x, p))
    as_np = landing_errors(x.numpy(), p.numpy())
    assert isinstance(as_np, np.ndarray)
    np.testing.assert_allclose(as_np, [2.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        landing_errors(x, p[:2])


def test_frechet_distance_kept():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, abs=1e-6)


def test_a_class_subset_is_scored_against_the_real_images_of_its_classes(engine):
    from core.config import DistillConfig
    from core.evaluation.assess import assess, build_reference
    from core.models.convnet import ConvNet, ConvNetConfig
    from core.models.teacher import Teacher
    from core.pipeline.distill import distill

    torch.manual_seed(0)
    teacher = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))
    reference = build_reference(engine, teacher, per_class=20, num_modes=3)
    dset = distill(engine, DistillConfig(method="random", ipc=10, classes=(1,)))
    scores = assess(reference, teacher, dset, w2=False)
    own = reference.labels == 1
    features = teacher.features(dset.images).numpy()
    expected = metrics.prdc(reference.features[own], features, reference.k, metrics.real_radii(reference.features[own], reference.k))
    assert scores["recall"] == pytest.approx(expected["recall"], abs=1e-4)
    assert scores["coverage"] == pytest.approx(expected["coverage"], abs=1e-4)
    against_all = metrics.prdc(reference.features, features, reference.k, reference.radii)
    assert scores["coverage"] > against_all["coverage"]   # all classes' real images would dilute it
    assert np.array_equal(reference.real_of((0, 1, 2)).radii.numpy(), reference.radii)   # every class: cached radii
    assert reference.real_of((2, 1, 0)) is reference.real_of((0, 1, 2))                  # prepared once


def test_frechet_distance_with_fewer_samples_than_dimensions_is_exact():
    import scipy.linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 200)), rng.normal(size=(45, 200)) + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - \
        2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
