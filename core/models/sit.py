"""SiT / DiT: the class-conditional latent transformer of Ma et al. (SiT) and Peebles & Xie (DiT), in plain torch.

Written without timm so that a raw checkpoint released by the SiT authors (e.g. ``SiT-XL-2-256x256.pt``, a
plain state dict of EMA weights) loads into it key for key: ``x_embedder.proj`` (the patchifying conv),
``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table`` (num_classes + 1 rows; the last row is the null
class of classifier-free guidance), ``blocks.{i}.attn.qkv`` / ``.attn.proj`` / ``.mlp.fc1`` / ``.mlp.fc2`` /
``.adaLN_modulation.1``, ``final_layer.linear`` / ``final_layer.adaLN_modulation.1`` and the fixed 2-D sin-cos
``pos_embed`` (1, T, hidden). Attention runs through ``torch.nn.functional.scaled_dot_product_attention``.

``SiT.forward(x, t, y)`` returns all ``out_channels`` (2·C when ``learn_sigma``: the first C are the model's
prediction, the last C DiT's variance interpolation, meaningless for a flow); SiT's own forward drops the
second half, here ``core.models.velocity.VelocityAdapter(learned_sigma=True)`` does, so that the raw output
stays available. ``t`` is passed to the sinusoidal embedding as given (times ``TimestepEmbedder.time_scale``,
1 by default): SiT feeds t in [0, 1] (t = 0 noise, t = 1 data), DiT feeds DDPM's timestep 0..999. Which
convention a checkpoint follows is not visible in its weights; ``core.models.velocity`` declares it (``"sit"``
for SiT's; ``"ddpm-eps"`` for DiT's, whose ε-prediction ``VelocityAdapter`` converts to a velocity).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.errors import CheckpointError

FREQUENCY_EMBEDDING_SIZE = 256


@dataclass
class SiTConfig:
    """Architecture of a SiT/DiT. ``input_size`` is the latent's height (= width), ``num_classes`` excludes
    the null class; ``learn_sigma`` doubles the output channels (DiT's learned variance, kept by SiT)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos position embedding)")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)


# name -> (depth, hidden_size, num_heads); patch size 2 (SiT also has /4 and /8 variants: same widths).
SIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "SiT-XL/2": (28, 1152, 16),
    "SiT-L/2": (24, 1024, 16),
    "SiT-B/2": (12, 768, 12),
    "SiT-S/2": (12, 384, 6),
}
HEADS_BY_HIDDEN = {hidden: heads for _, hidden, heads in SIT_PRESETS.values()}


def sit_config(name: str, **overrides) -> SiTConfig:
    """The preset ``name`` ("SiT-XL/2", "SiT-L/2", "SiT-B/2", "SiT-S/2"; "/4", "/8" and "DiT-" spellings too)
    with ``overrides`` (e.g. input_size=32, num_classes=1000, learn_sigma=True, the released models' values)."""
    match = re.fullmatch(r"(?:SiT|DiT)-(XL|L|B|S)/(\d+)", name.strip(), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"unknown SiT preset {name!r}; choose one of {', '.join(SIT_PRESETS)} (or /4, /8)")
    depth, hidden, heads = SIT_PRESETS[f"SiT-{match.group(1).upper()}/2"]
    params = dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(match.group(2)))
    params.update(overrides)
    return SiTConfig(**params)


# -------------------------------------------------------------------------------------------------
# Embeddings
# -------------------------------------------------------------------------------------------------

def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M, embed_dim): [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(-2k/embed_dim) (MAE / DiT), in float64."""
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0))
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size², embed_dim) fixed position embedding of DiT/SiT (row-major patches; the first half of
    the channels encodes the column, the second the row, as MAE's ``get_2d_sincos_pos_embed``)."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # np.meshgrid(w, h): w varies along columns
    emb = torch.cat([sincos_1d(embed_dim // 2, grid_w), sincos_1d(embed_dim // 2, grid_h)], dim=1)
    return emb.float()


def frequency_embedding(t: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE,
                        max_period: float = 10000.0) -> torch.Tensor:
    """(B, dim) = [cos(t·f), sin(t·f)], f_k = max_period^(-k/half), as SiT/DiT's ``timestep_embedding``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, T, hidden) by a conv with kernel = stride = patch size (timm's PatchEmbed)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of ``time_scale · t`` (256 frequencies) followed by a 2-layer SiLU MLP.

    ``t`` is taken as given: SiT's checkpoints expect t in [0, 1], DiT's DDPM timesteps 0..999. Loaders keep
    ``time_scale`` at 1 and map conventions in ``core.models.velocity.VelocityAdapter``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE,
                 time_scale: float = 1.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = frequency_embedding(t * self.time_scale, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Table of ``num_classes + 1`` class embeddings; id ``num_classes`` is the null class (CFG).

    Label dropout for training (``dropout_prob``) is applied by the caller's loss, not here: the module is
    deterministic so that a loaded checkpoint gives the same output in train and eval mode."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's Attention, qkv_bias=True)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (shift, scale, gate for attention and MLP)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# -------------------------------------------------------------------------------------------------
# The model
# -------------------------------------------------------------------------------------------------

class SiT(nn.Module):
    """SiT/DiT backbone: ``forward(x, t, y) -> (B, out_channels, H, W)`` with t passed to the embedding as given
    and y in [0, num_classes] (num_classes = null class). ``pos_embed`` is a persistent buffer (SiT stores it
    as a frozen parameter under the same key)."""

    def __init__(self, config: SiTConfig):
        super().__init__()
        self.config = config
        c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size)
        grid = c.input_size // c.patch_size
        self.register_buffer("pos_embed", sincos_2d_pos_embed(c.hidden_size, grid).unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList(SiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.initialize_weights()
        self.grad_checkpointing = False  # a run-time switch (see set_grad_checkpointing), not part of the config

    def set_grad_checkpointing(self, enabled: bool = True) -> "SiT":
        """Recompute each transformer block's activations in the backward pass instead of storing them
        (``torch.utils.checkpoint``, non-reentrant, autocast state replayed): activation memory falls from
        O(depth) blocks to one, for about one extra forward of compute; gradients are the same."""
        self.grad_checkpointing = bool(enabled)
        return self

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def initialize_weights(self) -> None:
        """SiT's initialisation: xavier linears, zero adaLN modulations and output layer (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                     self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p·p·C) -> (B, C, H, W)."""
        c, p = self.config.out_channels, self.config.patch_size
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.config.latent_shape:
            raise ValueError(f"SiT expects latents of shape (B, {', '.join(map(str, self.config.latent_shape))}), "
                             f"got {tuple(x.shape)}")
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, c, use_reentrant=False) if checkpointing else block(h, c)
        return self.unpatchify(self.final_layer(h, c))

    def config_dict(self) -> dict:
        return asdict(self.config)


# -------------------------------------------------------------------------------------------------
# Config inference from a state dict
# -------------------------------------------------------------------------------------------------

def _shape(state: dict[str, torch.Tensor], key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{name}: not a SiT/DiT state dict: key {key!r} is missing "
                              f"(found e.g. {', '.join(sorted(state)[:5]) or 'no keys'})")
    return tuple(state[key].shape)


def infer_sit_config(state: dict[str, torch.Tensor], input_size: int | None = None, num_heads: int | None = None,
                     name: str = "state dict") -> SiTConfig:
    """The SiTConfig a SiT/DiT state dict was saved from, read off its tensor shapes.

    depth: number of ``blocks.{i}``; hidden size, patch size and input channels: ``x_embedder.proj.weight``
    (hidden, C, p, p); classes: label-table rows minus the null row; learn_sigma: ``final_layer.linear`` has
    p·p·2C outputs; mlp_ratio: ``blocks.0.mlp.fc1``; input_size: from ``pos_embed`` (1, (H/p)², hidden) when
    present, else the ``input_size`` argument (the latent's height). Attention heads do not show in shapes:
    ``num_heads`` if given, else the SiT preset of that width (XL 16, L 16, B 12, S 6). A shape that fits no
    SiT raises CheckpointError naming ``name``.
    """
    hidden, in_ch, p, p2 = _shape(state, "x_embedder.proj.weight", name)
    if p != p2:
        raise CheckpointError(f"{name}: non-square patches {p}x{p2} are not a SiT")
    rows = _shape(state, "y_embedder.embedding_table.weight", name)[0]
    out = _shape(state, "final_layer.linear.weight", name)[0]
    if out == p * p * 2 * in_ch:
        learn_sigma = True
    elif out == p * p * in_ch:
        learn_sigma = False
    else:
        raise CheckpointError(f"{name}: final_layer.linear has {out} outputs, expected p·p·C = {p * p * in_ch} or "
                              f"p·p·2C = {p * p * 2 * in_ch} (patch {p}, {in_ch} channels)")
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not block_ids:
        raise CheckpointError(f"{name}: no transformer blocks (blocks.N.*) in the state dict")
    depth = max(block_ids) + 1
    if block_ids != set(range(depth)):
        raise CheckpointError(f"{name}: blocks {sorted(set(range(depth)) - block_ids)} are missing")
    mlp_hidden = _shape(state, "blocks.0.mlp.fc1.weight", name)[0]
    if "pos_embed" in state:
        tokens = state["pos_embed"].shape[-2]
        grid = int(round(tokens ** 0.5))
        if grid * grid != tokens:
            raise CheckpointError(f"{name}: pos_embed has {tokens} positions, not a square grid")
        inferred = grid * p
        if input_size is not None and int(input_size) != inferred:
            raise CheckpointError(f"{name}: model works on {inferred}x{inferred} latents (pos_embed), the data's are "
                                  f"{input_size}x{input_size}")
        input_size = inferred
    elif input_size is None:
        raise CheckpointError(f"{name}: no pos_embed in the state dict, so the latent size is unknown; pass the "
                              f"data's latent shape (latent_shape=(C, H, W))")
    if num_heads is None:
        num_heads = HEADS_BY_HIDDEN.get(hidden)
        if num_heads is None:
            raise CheckpointError(f"{name}: hidden size {hidden} matches no SiT preset "
                                  f"({', '.join(f'{k}: {v[1]}' for k, v in SIT_PRESETS.items())}); the number of "
                                  f"attention heads cannot be read off the weights: pass num_heads")
    try:
        return SiTConfig(input_size=int(input_size), patch_size=p, in_channels=in_ch, hidden_size=hidden,
                         depth=depth, num_heads=int(num_heads), mlp_ratio=mlp_hidden / hidden,
                         num_classes=rows - 1, learn_sigma=learn_sigma)
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
