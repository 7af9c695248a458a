"""difflab: diffusion models as Lilian Weng's post "What are Diffusion Models?" explains them."""

__version__ = "0.1.0"
