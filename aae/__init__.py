"""Adversarial Autoencoders (Makhzani et al., 2015) in pure PyTorch: priors, networks, phases, variants."""
