"""Diffusion without networks: noise kinds (:mod:`.noise`), where diffusion happens (:mod:`.spaces`:
pixels or an autoencoder's latents) and the one sampler (:mod:`.sampler`: partial noising and
denoising, generation from noise). The schedulers are MONAI's; training objectives live in
:mod:`anodiff.training.objectives`."""
