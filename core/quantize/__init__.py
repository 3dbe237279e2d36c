"""DDOQ / D4M / random quantization of latent classes, streaming quantization, exact W2."""
