import numpy as np
import pytest
import scipy.linalg
import torch

from core.config import SOLVER_ORDER, SOLVERS
from core.evaluation.metrics import frechet_distance
from core.transport.solvers import integrate, time_grid


def test_time_grid_shapes_shift_and_errors():
    g = time_grid(4, t0=0.2)
    assert torch.allclose(g, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64))
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted.diff() > 0).all()
    assert shifted[1] < 0.25  # more resolution near the noise end
    for bad in (dict(steps=0), dict(steps=3, t0=1.0), dict(steps=3, shift=0.0)):
        with pytest.raises(ValueError):
            time_grid(**bad)


@pytest.mark.parametrize("method", SOLVERS)
def test_solver_order_and_nfe_on_a_linear_ode(method):
    """dx/dt = x from t=0: exact x(1) = e x(0). Error ratio between N and 2N steps ~ 2^order."""
    x0 = torch.ones(1, dtype=torch.float64)
    errors = []
    for steps in (8, 16):
        x, nfe = integrate(lambda x, t: x, x0, time_grid(steps), method)
        assert nfe == steps * {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}[method]
        errors.append(abs(x.item() - np.e))
    order = np.log2(errors[0] / errors[1])
    assert abs(order - SOLVER_ORDER[method]) < 0.3


def test_on_step_sees_every_state():
    seen = []
    integrate(lambda x, t: torch.ones_like(x), torch.zeros(2), time_grid(5), "heun",
              on_step=lambda i, t, x, v: seen.append((i, round(t, 6), x.clone())))
    assert [s[0] for s in seen] == list(range(5))
    assert torch.allclose(seen[-1][2], torch.full((2,), 0.8, dtype=torch.float32))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, b[:, :5])
