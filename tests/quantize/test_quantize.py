import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from core.data.latent_cache import LatentSet
from core.quantize import ddoq as q
from core.quantize.ddoq import ClassQuantization, QuantizeConfig, allocate_by_weight, quantize, quantize_class
from core.quantize.streaming import quantize_class_streaming
from core.quantize.w2 import squared_distances, wasserstein2

SIZES = (60, 25, 10)  # unequal clusters: DDOQ weights differ clearly from uniform


def clustered(seed: int = 0, sizes=SIZES, shape=(2, 2, 2), spread: float = 0.3) -> torch.Tensor:
    """Well-separated Gaussian clusters of the given sizes, shape (sum(sizes), *shape)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    means = rng.normal(0, 5, size=(len(sizes), d))
    x = np.concatenate([m + spread * rng.normal(size=(s, d)) for m, s in zip(means, sizes)])
    return torch.from_numpy(x.astype(np.float32)).reshape(len(x), *shape)


def brute_nearest(x: torch.Tensor, protos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    d = ((x.reshape(len(x), 1, -1).double() - protos.reshape(1, len(protos), -1).double()) ** 2).sum(-1)
    return d.argmin(1).numpy(), d.min(1).values.numpy()


@pytest.fixture
def latent_set() -> LatentSet:
    parts = [clustered(0), clustered(1), clustered(2, sizes=(30, 15, 10))]
    labels = np.repeat(np.arange(3), [len(p) for p in parts]).astype(np.int64)
    return LatentSet(torch.cat(parts), labels, ("tee", "trouser", "bag"), "data", "vae")


def test_ddoq_shapes_weights_and_assignments():
    x = clustered()
    r = quantize_class(x, 0, QuantizeConfig(method="ddoq", ipc=3))
    assert isinstance(r, ClassQuantization) and r.label == 0 and r.ipc == 3
    assert r.prototypes.shape == (3, 2, 2, 2) and r.prototypes.dtype == torch.float32
    assert r.weights.dtype == np.float64 and r.weights.shape == (3,)
    assert r.assignments.dtype == np.int64 and r.assignments.shape == (len(x),)
    assert r.source_indices is None
    assert r.weights.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(r.weights, np.bincount(r.assignments, minlength=3) / len(x))
    np.testing.assert_array_equal(r.weights, r.masses)
    assert np.all(np.diff(r.weights) <= 0), "prototypes are ordered by decreasing mass"
    np.testing.assert_allclose(sorted(r.weights), sorted(np.array(SIZES) / sum(SIZES)))
    assign, sq = brute_nearest(x, r.prototypes)
    np.testing.assert_array_equal(r.assignments, assign)
    assert r.quantization_error == pytest.approx(np.sqrt(sq.mean()), rel=1e-6)
    assert set(r.seconds) >= {"fit", "assign", "w2", "total"}


def test_d4m_same_centroids_uniform_weights():
    x = clustered()
    ddoq = quantize_class(x, 1, QuantizeConfig(method="ddoq", ipc=4, seed=3))
    d4m = quantize_class(x, 1, QuantizeConfig(method="d4m", ipc=4, seed=3))
    assert torch.equal(ddoq.prototypes, d4m.prototypes)
    np.testing.assert_array_equal(ddoq.assignments, d4m.assignments)
    np.testing.assert_allclose(d4m.weights, np.full(4, 0.25))
    np.testing.assert_array_equal(d4m.masses, ddoq.weights)
    assert d4m.quantization_error == ddoq.quantization_error
    assert d4m.w2_weighted == d4m.w2_uniform == pytest.approx(ddoq.w2_uniform, rel=1e-12)


def test_random_picks_distinct_real_latents_seeded():
    x = clustered()
    flat = x.reshape(len(x), -1)
    cfg = QuantizeConfig(method="random", ipc=7, seed=5)
    r = quantize_class(x, 0, cfg)
    assert r.source_indices.dtype == np.int64 and len(set(r.source_indices.tolist())) == 7
    assert torch.equal(r.prototypes.reshape(7, -1), flat[torch.from_numpy(r.source_indices)])
    np.testing.assert_allclose(r.weights, np.full(7, 1 / 7))
    again = quantize_class(x, 0, cfg)
    np.testing.assert_array_equal(again.source_indices, r.source_indices)
    other = quantize_class(x, 0, QuantizeConfig(method="random", ipc=7, seed=6))
    assert not np.array_equal(other.source_indices, r.source_indices)
    other_class = quantize_class(x, 1, cfg)  # the class label enters the stream too
    assert not np.array_equal(other_class.source_indices, r.source_indices)
    smaller = quantize_class(x, 0, QuantizeConfig(method="random", ipc=3, seed=5))
    np.testing.assert_array_equal(smaller.source_indices, r.source_indices[:3])
    everything = quantize_class(x, 0, QuantizeConfig(method="random", ipc=len(x)))
    assert sorted(everything.source_indices.tolist()) == list(range(len(x)))
    assert everything.quantization_error == pytest.approx(0, abs=1e-6)
    assert everything.w2_uniform == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("method", ["ddoq", "d4m"])
def test_medoid_prototypes_are_input_rows(method):
    x = clustered()
    flat = x.reshape(len(x), -1)
    plain = quantize_class(x, 0, QuantizeConfig(method=method, ipc=5))
    r = quantize_class(x, 0, QuantizeConfig(method=method, ipc=5, medoid=True))
    assert len(set(r.source_indices.tolist())) == 5
    assert torch.equal(r.prototypes.reshape(5, -1), flat[torch.from_numpy(r.source_indices)])
    assign, _ = brute_nearest(x, r.prototypes)
    np.testing.assert_array_equal(r.assignments, assign)
    if method == "ddoq":
        np.testing.assert_allclose(r.weights, np.bincount(assign, minlength=5) / len(x))
    else:
        np.testing.assert_allclose(r.weights, np.full(5, 0.2))
    assert r.quantization_error >= plain.quantization_error * 0.999  # centroids are the better centres here


def test_distinct_nearest_rows_resolves_collisions_optimally():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    centres = np.stack([x[4] + 0.01, x[4] - 0.01, x[2] + 0.5]).astype(np.float32)  # two share a nearest row
    rows = q._distinct_nearest_rows(x, centres)
    assert len(set(rows.tolist())) == 3
    cost = squared_distances(centres, x)
    best = min(itertools.permutations(range(9), 3), key=lambda p: sum(cost[i, j] for i, j in enumerate(p)))
    assert cost[np.arange(3), rows].sum() == pytest.approx(cost[np.arange(3), list(best)].sum(), rel=1e-12)


@pytest.mark.parametrize("method,medoid", [("ddoq", False), ("ddoq", True), ("d4m", False), ("random", False)])
def test_weighted_w2_equals_e2_and_beats_uniform(method, medoid):
    x = clustered()
    r = quantize_class(x, 0, QuantizeConfig(method=method, ipc=3, medoid=medoid, seed=1))
    # for any fixed centres, the Voronoi-mass measure attains W2 = e_2 (nearest-centre map is optimal)
    voronoi = wasserstein2(x, r.prototypes, r.masses)
    assert voronoi == pytest.approx(r.quantization_error, rel=1e-5)
    assert voronoi <= r.w2_uniform * (1 + 1e-9)
    if method == "ddoq":
        assert r.w2_weighted == pytest.approx(r.quantization_error, rel=1e-5)
        if not medoid:  # unequal clusters: uniform mass must be moved across clusters
            assert r.w2_weighted < 0.5 * r.w2_uniform
    else:
        assert r.w2_weighted == r.w2_uniform


def test_w2_matches_brute_force_assignment():
    rng = np.random.default_rng(2)
    x, c = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    cost = ((x[:, None] - c[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    assert wasserstein2(x, c) == pytest.approx(np.sqrt(cost[rows, cols].mean()), rel=1e-9)
    # weighted: masses that are multiples of 1/N are the same problem with prototypes repeated
    protos, counts = c[:3], np.array([4, 2, 1])
    repeated = np.repeat(protos, counts, axis=0)
    cost = ((x[:, None] - repeated[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    assert wasserstein2(x, protos, counts / 7) == pytest.approx(np.sqrt(cost[rows, cols].mean()), rel=1e-9)


def test_deterministic_and_quantize_matches_quantize_class(latent_set):
    cfg = QuantizeConfig(method="ddoq", ipc=4, seed=11)
    a = quantize(latent_set, [2, 0], cfg)
    b = quantize(latent_set, [2, 0], cfg)
    assert [r.label for r in a] == [2, 0]
    for ra, rb in zip(a, b):
        assert torch.equal(ra.prototypes, rb.prototypes)
        np.testing.assert_array_equal(ra.assignments, rb.assignments)
        assert ra.w2_weighted == rb.w2_weighted
    single = quantize_class(latent_set.of_class(0), 0, cfg)
    assert torch.equal(single.prototypes, a[1].prototypes)
    assert a[0].prototypes.shape == (4, *latent_set.latent_shape)


def test_minibatch_backend_is_sensible():
    x = clustered(sizes=(300, 120, 60))
    full = quantize_class(x, 0, QuantizeConfig(ipc=3, backend="sklearn"))
    mini = quantize_class(x, 0, QuantizeConfig(ipc=3, backend="minibatch", batch_size=64))
    np.testing.assert_allclose(mini.weights, np.array([300, 120, 60]) / 480)
    assert mini.quantization_error <= 1.05 * full.quantization_error
    assert mini.w2_weighted == pytest.approx(mini.quantization_error, rel=1e-5)
    auto = quantize_class(x, 0, QuantizeConfig(ipc=3, backend="auto", batch_size=64, minibatch_above=100))
    assert torch.equal(auto.prototypes, mini.prototypes)


def test_w2_subsample_and_skip():
    x = clustered()
    r = quantize_class(x, 0, QuantizeConfig(ipc=3, w2_max_points=40))
    assert r.w2_points == 40 and np.isfinite(r.w2_weighted) and np.isfinite(r.w2_uniform)
    again = quantize_class(x, 0, QuantizeConfig(ipc=3, w2_max_points=40))
    assert again.w2_uniform == r.w2_uniform
    full = quantize_class(x, 0, QuantizeConfig(ipc=3))
    assert full.w2_points == len(x)
    assert r.quantization_error == full.quantization_error  # e_2 always uses every latent
    off = quantize_class(x, 0, QuantizeConfig(ipc=3, compute_w2=False))
    assert off.w2_weighted is None and off.w2_uniform is None and off.w2_points == 0


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(ipc=0), r"ipc must be an integer >= 1"),
    (dict(ipc=2.5), r"ipc must be an integer >= 1"),
    (dict(method="kmeans"), r"method must be one of \('ddoq', 'd4m', 'random'\)"),
    (dict(backend="faiss"), r"backend must be one of \('auto', 'sklearn', 'minibatch'\)"),
    (dict(method="random", medoid=True), r"medoid=True is only valid for method 'ddoq' or 'd4m'"),
    (dict(w2_max_points=0), r"w2_max_points must be an integer >= 1"),
    (dict(seed=-1), r"seed must be an integer >= 0"),
    (dict(threads=0), r"threads must be None or an integer >= 1"),
])
def test_bad_config_raises(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        QuantizeConfig(**kwargs)


def test_bad_inputs_raise_before_any_work(latent_set, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("k-means ran before validation finished")

    monkeypatch.setattr(q, "_kmeans", no_work)
    cfg = QuantizeConfig(ipc=4)
    with pytest.raises(ValueError, match=r"classes must be ids in \[0, 3\).*\[3\]"):
        quantize(latent_set, [0, 3], cfg)
    with pytest.raises(ValueError, match=r"classes must be ids in \[0, 3\).*\[-1\]"):
        quantize(latent_set, [-1], cfg)
    with pytest.raises(ValueError, match="must not repeat"):
        quantize(latent_set, [1, 1], cfg)
    with pytest.raises(ValueError, match=r"ipc=56 is larger than class 2 \('bag'\), which has 55 latents; "
                                         r"choose ipc in \[1, 55\]"):
        quantize(latent_set, [0, 2], QuantizeConfig(ipc=56))
    with pytest.raises(ValueError, match=r"ipc=96 is larger than class 5, which has 95 latents"):
        quantize_class(clustered(), 5, QuantizeConfig(ipc=96))
    latents = latent_set.latents.clone()
    latents[int(np.flatnonzero(latent_set.labels == 2)[3]), 0, 0, 0] = float("nan")
    bad_set = LatentSet(latents, latent_set.labels, latent_set.class_names, "d", "v")
    with pytest.raises(ValueError, match=r"class 2 \('bag'\) contain non-finite values .* in 1 of 55 rows"):
        quantize(bad_set, [0, 2], cfg)
    x = clustered()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_class(x, 0, cfg)


def test_allocate_by_weight_largest_remainder():
    np.testing.assert_array_equal(allocate_by_weight(np.array([0.5, 0.3, 0.2]), 4), [2, 1, 1])  # 2, 1.2, 0.8
    np.testing.assert_array_equal(allocate_by_weight(np.ones(3) / 3, 2), [1, 1, 0])  # ties: lower index first
    np.testing.assert_array_equal(allocate_by_weight(np.array([3.0, 1.0]), 8), [6, 2])  # unnormalised is fine
    np.testing.assert_array_equal(allocate_by_weight(np.array([0.7, 0.3]), 0), [0, 0])
    np.testing.assert_array_equal(allocate_by_weight(np.array([0.0, 1.0]), 5), [0, 5])
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.dirichlet(np.ones(rng.integers(1, 12)))
        n = int(rng.integers(0, 200))
        counts = allocate_by_weight(w, n)
        quota = n * w
        assert counts.dtype == np.int64 and counts.sum() == n
        assert np.all(counts >= np.floor(quota)) and np.all(counts <= np.floor(quota) + 1)
        bumped = counts > np.floor(quota)
        if bumped.any() and (~bumped).any():  # every bumped remainder >= every unbumped one
            frac = quota - np.floor(quota)
            assert frac[bumped].min() >= frac[~bumped].max()
    for bad_w, bad_n in [(np.array([]), 1), (np.array([-0.1, 1.1]), 1), (np.zeros(2), 1),
                         (np.array([np.nan, 1.0]), 1), (np.array([1.0]), -1)]:
        with pytest.raises(ValueError, match="weights must|n must"):
            allocate_by_weight(bad_w, bad_n)


def test_chunked_paths_match_and_input_untouched(monkeypatch):
    x = clustered()
    before = x.clone()
    cfg = QuantizeConfig(method="ddoq", ipc=5, medoid=True, w2_max_points=50)  # N > cap: chunked assignment
    whole = quantize_class(x, 0, cfg)
    monkeypatch.setattr(q, "_CHUNK", 7)
    chunked = quantize_class(x, 0, cfg)
    np.testing.assert_array_equal(chunked.source_indices, whole.source_indices)
    np.testing.assert_array_equal(chunked.assignments, whole.assignments)
    assert chunked.quantization_error == pytest.approx(whole.quantization_error, rel=1e-12)
    assert torch.equal(x, before), "the caller's latents must not be modified"
    half = quantize_class(x.half(), 0, QuantizeConfig(ipc=3, compute_w2=False))
    assert half.prototypes.dtype == torch.float32


def test_parallel_classes_give_the_same_result():
    from core.data.latent_cache import LatentSet

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(300, 2, 2, 2, generator=g)
    labels = np.repeat(np.arange(3), 100)
    data = LatentSet(latents, labels, ("a", "b", "c"), "x", "y")
    serial = quantize(data, [0, 1, 2], QuantizeConfig(ipc=4, workers=1))
    parallel = quantize(data, [0, 1, 2], QuantizeConfig(ipc=4, workers=3))
    for a, b in zip(serial, parallel):
        assert torch.equal(a.prototypes, b.prototypes) and np.array_equal(a.weights, b.weights)
        assert a.w2_weighted == b.w2_weighted


# ---------------------------------------------------------------------------------------------
# streaming k-means (classes too large for memory)
# ---------------------------------------------------------------------------------------------

def chunked(x: torch.Tensor, size: int):
    """A re-iterable chunk source, as LatentStore.iter_class gives."""
    return lambda: (x[i:i + size] for i in range(0, len(x), size))


BIG = (600, 250, 100)  # 950 rows: more than the streaming sample below, so the mini-batch path runs


def test_streaming_kmeans_matches_in_memory_on_separated_clusters():
    x = clustered(3, sizes=BIG, spread=0.2)
    config = QuantizeConfig(method="ddoq", ipc=3, seed=1, batch_size=64, w2_max_points=200)
    memory = quantize_class(x, 2, config)
    stream = quantize_class_streaming(chunked(x, 100), 2, config, passes=2, init_size=60)
    assert isinstance(stream, ClassQuantization) and stream.label == 2 and stream.prototypes.shape == (3, 2, 2, 2)
    assert stream.weights.sum() == pytest.approx(1.0, abs=1e-12) and np.all(np.diff(stream.weights) <= 0)
    np.testing.assert_allclose(stream.weights, np.array(BIG) / sum(BIG))  # every cluster is one cell
    np.testing.assert_array_equal(stream.weights, memory.weights)
    torch.testing.assert_close(stream.prototypes, memory.prototypes, atol=0.03, rtol=0)
    assign, sq = brute_nearest(x, stream.prototypes)
    np.testing.assert_array_equal(stream.assignments, assign)
    np.testing.assert_allclose(stream.masses, np.bincount(assign, minlength=3) / len(x))
    assert stream.quantization_error == pytest.approx(np.sqrt(sq.mean()), rel=1e-5)
    assert stream.quantization_error == pytest.approx(memory.quantization_error, rel=0.01)
    assert stream.w2_points == 200 and stream.w2_weighted <= stream.w2_uniform + 1e-9
    # deterministic, and the same for other chunk sizes (only the row order matters)
    again = quantize_class_streaming(chunked(x, 37), 2, config, passes=2, init_size=60)
    torch.testing.assert_close(again.prototypes, stream.prototypes, atol=0, rtol=0)
    np.testing.assert_array_equal(again.assignments, stream.assignments)


def test_streaming_small_class_equals_quantize_class_and_other_methods():
    x = clustered(4)  # 95 rows fit the streaming sample: quantized in memory, identical
    for method in ("ddoq", "d4m", "random"):
        config = QuantizeConfig(method=method, ipc=4, seed=2)
        a, b = quantize_class(x, 1, config), quantize_class_streaming(chunked(x, 10), 1, config)
        torch.testing.assert_close(a.prototypes, b.prototypes, atol=0, rtol=0)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.w2_weighted == pytest.approx(b.w2_weighted)
    big = clustered(5, sizes=BIG)
    config = QuantizeConfig(method="random", ipc=5, seed=3, compute_w2=False)
    a, b = quantize_class(big, 0, config), quantize_class_streaming(chunked(big, 64), 0, config, init_size=50)
    np.testing.assert_array_equal(a.source_indices, b.source_indices)  # the same seeded rows, gathered from the stream
    torch.testing.assert_close(b.prototypes, big[b.source_indices], atol=0, rtol=0)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    medoid = quantize_class_streaming(chunked(big, 64), 0, QuantizeConfig(ipc=3, medoid=True, compute_w2=False),
                                        init_size=50)
    assert len(set(medoid.source_indices.tolist())) == 3
    torch.testing.assert_close(medoid.prototypes, big[medoid.source_indices], atol=0, rtol=0)


def test_streaming_errors():
    x = clustered()
    with pytest.raises(TypeError, match="callable"):
        quantize_class_streaming(iter([x]), 0, QuantizeConfig(ipc=2))
    with pytest.raises(ValueError, match="ipc=200 is larger than class 0"):
        quantize_class_streaming(chunked(x, 10), 0, QuantizeConfig(ipc=200))
    bad = x.clone()
    bad[50] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_class_streaming(chunked(bad, 10), 0, QuantizeConfig(ipc=2))
    with pytest.raises(ValueError, match="different latent shapes"):
        quantize_class_streaming(lambda: iter([x[:5], x[5:10].reshape(5, 8)]), 0, QuantizeConfig(ipc=2))
    with pytest.raises(ValueError, match="no latents"):
        quantize_class_streaming(lambda: iter([]), 0, QuantizeConfig(ipc=2))
