"""Pixel-space DDPM (``model.kind: ddpm``): the detection denoiser diffuses the images themselves
(Pinaya et al. 2022; Wyatt et al. 2022). Everything it does is :class:`~anodiff.methods.anomaly.AnomalyMethod`'s."""

from __future__ import annotations

from anodiff.methods.anomaly.method import AnomalyMethod


class PixelDDPM(AnomalyMethod):
    kind = "ddpm"
    title = "pixel-space DDPM, unsupervised anomaly detection"


DDPM = PixelDDPM()
