"""Training loops of the generators, the VAE and the teacher."""
