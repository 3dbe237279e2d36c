"""Networks and their loading: VAE wrapper, latent MLP, SiT/DiT, ConvNet, teacher, velocity adapters."""
