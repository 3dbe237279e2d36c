"""Datasets (embedded Fashion-MNIST, ImageFolder), the latent cache and the sharded latent store."""
