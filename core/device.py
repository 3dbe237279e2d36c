"""Device and dtype selection."""
from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; otherwise the named device (checked to exist)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a CPU generator seeded the same way."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
