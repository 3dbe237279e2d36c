"""The kinds of saved model folders this project writes (config.json "kind") and the fix each
error message names. One table, so loaders and savers agree."""
from __future__ import annotations

FLOW_KIND = "distill-studio/flow-mlp"


SIT_FLOW_KIND = "distill-studio/flow-sit"  # a SiT trained by train-flow --model sit-*: config.json + model.safetensors


FLOW_FIX = "train one for this VAE and dataset with `python -m core train-flow --out DIR`"


DIFFUSION_KIND = "distill-studio/diffusion-mlp"


DIFFUSION_FIX = "train one for this VAE and dataset with `python -m core train-diffusion --out DIR`"
