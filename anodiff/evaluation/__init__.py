"""Evaluation, following anodiff's protocol: metrics and named thresholds (:mod:`.metrics`), the intensity
baseline (:mod:`.baseline`), the unsupervised and supervised figures (:mod:`.anomaly`,
:mod:`.segmentation`) and the one report type (:mod:`.report`). Numbers from maps; no network runs here."""
