"""Models that travel between difflab and Hugging Face diffusers (docs/interop.md).

- :mod:`~difflab.interop.unet_map`: a difflab :class:`~difflab.nn.unet.UNet` as the config and
  weights of diffusers' ``UNet2DModel``, exactly, or a one-line refusal saying what has no
  equivalent.
- :mod:`~difflab.interop.dit_map`: the same for a :class:`~difflab.nn.dit.DiT` and diffusers'
  ``DiTTransformer2DModel``.
- :mod:`~difflab.interop.schedule_map`: a difflab :class:`~difflab.schedules.Schedule` as a
  diffusers scheduler config and back.
- :mod:`~difflab.interop.export`: a run directory → a folder ``DDPMPipeline.from_pretrained``
  and ``DDIMPipeline.from_pretrained`` load offline (``difflab export RUN --format diffusers``).
- :mod:`~difflab.interop.load`: a local diffusers ``UNet2DModel`` folder → a difflab model and
  schedule (``difflab.load_diffusers``).

diffusers is optional (``pip install diffusers==0.42.1``): nothing here imports it until a
function needs it (:func:`~difflab.interop.requirement.require_diffusers`).
"""
