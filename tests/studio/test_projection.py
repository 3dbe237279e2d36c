import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.studio import projection as proj
from core.studio.projection import Projection, ProjectionConfig, fit_projection, load_or_fit_projection, subsample_index


def clusters(n_per: int = 70, shape=(4, 2, 2), seed: int = 0):
    """3 well separated Gaussian clusters of latents (3 * n_per, *shape) float32 and their labels."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    centres = rng.normal(0, 6, size=(3, d))
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x.reshape(-1, *shape), np.repeat(np.arange(3), n_per)


def test_subsample_is_per_class_sorted_and_seeded():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 30)
    idx = subsample_index(labels, per_class=20, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [20, 5, 20]
    assert np.array_equal(idx, subsample_index(labels, 20, 3))
    assert not np.array_equal(idx, subsample_index(labels, 20, 4))


def test_pca_coords_equal_transform_and_match_sklearn():
    from sklearn.decomposition import PCA
    x, y = clusters()
    p = fit_projection(x, y, ProjectionConfig(method="pca", per_class=50, seed=1))
    assert p.method == "pca" and p.coords.shape == (150, 2) and p.coords.dtype == np.float32
    assert np.array_equal(p.reference_labels, y[p.reference_index])
    ref = x[p.reference_index]
    np.testing.assert_array_equal(p.transform(ref), p.coords)
    np.testing.assert_allclose(p.coords, PCA(2).fit_transform(ref.reshape(150, -1)), atol=1e-3)
    share = PCA(2).fit(ref.reshape(150, -1)).explained_variance_ratio_
    assert p.axis_titles() == tuple(f"PC {k + 1} ({100 * share[k]:.0f}% of variance)" for k in range(2))


def test_transform_accepts_torch_numpy_and_image_shapes():
    x, y = clusters()
    p = fit_projection(torch.from_numpy(x), torch.from_numpy(y), ProjectionConfig())
    new = np.random.default_rng(1).normal(size=(5, 4, 2, 2)).astype(np.float32)
    out = p.transform(new)
    assert out.shape == (5, 2) and out.dtype == np.float32
    np.testing.assert_allclose(p.transform(torch.from_numpy(new).double()), out, atol=1e-5)
    np.testing.assert_allclose(p.transform(new.reshape(5, 16)), out, atol=1e-6)
    assert p.transform(np.zeros((0, 16))).shape == (0, 2)
    with pytest.raises(ValueError, match="16"):
        p.transform(np.zeros((2, 15)))


@pytest.mark.parametrize("latents, labels, match", [
    (np.zeros((4, 3)), np.zeros(5, int), "4 rows but labels have 5"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.zeros(2, int), "NaN or inf"),
    (np.zeros((1, 3)), np.zeros(1, int), "at least 2 latents"),
    (np.zeros(4), np.zeros(4, int), "at least 2 dimensions"),
    (np.zeros((4, 3)), np.zeros(4), "integer"),
])
def test_bad_inputs_raise_clear_errors(latents, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_projection(latents, labels, ProjectionConfig())


def test_bad_config_raises():
    with pytest.raises(ValueError, match="method"):
        ProjectionConfig(method="tsne")
    with pytest.raises(ValueError, match="knn"):
        ProjectionConfig(knn=0)


def test_knn_placement_hits_and_weighting():
    ref = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
    coords = np.array([[0, 0], [10, 0], [0, 10], [50, 50]], np.float32)
    p = Projection("umap", np.arange(4), np.zeros(4, np.int64), coords, reference_latents=ref, knn=2)
    np.testing.assert_array_equal(p.transform(ref), coords)                 # exact hits: own coordinate
    np.testing.assert_allclose(p.transform(torch.tensor([[0.5, 0.0]])), [[5, 0]], atol=1e-5)  # midway
    np.testing.assert_allclose(p.transform([[0.25, 0.0]]), [[2.5, 0]], atol=1e-5)  # weights 1/d: 3:1


def test_pca_is_not_cached(tmp_path):
    x, y = clusters(n_per=10)
    load_or_fit_projection(x, y, ProjectionConfig(), tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_umap_cache_round_trip_and_refit(tmp_path, monkeypatch):
    """The one slow test: the first UMAP fit in a process JIT-compiles (see MACHINE-NOTES, UMAP)."""
    x, y = clusters()
    cfg = ProjectionConfig(method="umap", per_class=60, n_neighbors=5, n_epochs=30, knn=5)
    cache = tmp_path / "umap.safetensors"
    stages = []
    t0 = time.perf_counter()
    p = load_or_fit_projection(x, y, cfg, cache, progress=lambda f, m: stages.append((f, m)))
    print(f"first UMAP fit (incl. import/compile): {time.perf_counter() - t0:.1f} s")
    assert cache.is_file() and [f for f, _ in stages] == [0.0, 0.1, 1.0]
    assert p.method == "umap" and p.coords.shape == (180, 2) and np.isfinite(p.coords).all()
    np.testing.assert_array_equal(p.transform(x[p.reference_index]), p.coords)
    # clusters stay apart: each new point lands nearest the 2-D centre of its own class
    x_new, y_new = clusters(n_per=5, seed=0)
    centres = np.stack([p.coords[p.reference_labels == c].mean(0) for c in range(3)])
    placed = p.transform(x_new + 0.1)
    assert np.array_equal(np.linalg.norm(placed[:, None] - centres, axis=2).argmin(1), y_new)

    fits = []
    real_fit = proj._fit
    monkeypatch.setattr(proj, "_fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    q = load_or_fit_projection(torch.from_numpy(x), y, replace(cfg, knn=3), cache)
    assert fits == [] and q.knn == 3                      # loaded, knn taken from the caller's config
    for name in ("reference_index", "reference_labels", "coords", "reference_latents"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))

    class Refit(Exception):
        pass

    def no_fit(*a, **k):
        raise Refit
    monkeypatch.setattr(proj, "_fit", no_fit)
    for other_cfg, other_x in ((replace(cfg, seed=1), x), (cfg, x * 1.01)):
        with pytest.raises(Refit):                        # another config or other latents: refit
            load_or_fit_projection(other_x, y, other_cfg, cache)

    cache.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(proj, "_fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    r = load_or_fit_projection(x, y, cfg, cache)
    assert fits == [1]                                    # corrupt cache: refitted, not an exception ...
    np.testing.assert_array_equal(r.coords, p.coords)     # ... same seed, same embedding ...
    fits.clear()
    load_or_fit_projection(x, y, cfg, cache)
    assert fits == []                                     # ... and the file was rewritten
