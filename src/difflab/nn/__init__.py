"""Networks only: parameters and forward passes, no configs, files or training.

``mlp`` (2-D points), ``unet`` with ``unet_blocks`` and ``embedding`` (images), ``classifier``
and ``noisy_classifier``, ``text_encoder``; ``registry`` names the kinds a run's config may
build (``MODELS``, ``register_model``).
"""
