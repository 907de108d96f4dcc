"""Unsupervised detection (``model.kind: ddpm`` and ``ldm``): a diffusion model of healthy tissue, a scan noised
part of the way and denoised back, the calibrated reconstruction error as the anomaly map.

- ``method.py``       :class:`AnomalyMethod`: healthy training, loading, prediction, its settings
- ``ddpm.py``, ``ldm.py``  its two spaces: pixels; an autoencoder's latents (stage 1 + latent diffusion)
- ``scoring.py``      reconstruction -> residual -> map -> mask for one case
- ``calibration.py``  thresholds, healthy residual statistics, the healthy floor
- ``sensitivity.py``  the label-free check: generic anomalies inserted into healthy tissue, scored
- ``evaluation.py``   evaluation beside the intensity baselines
"""
