"""Supervised segmentation, SegDiff-style (``model.kind: segdiff``): masks drawn by a diffusion model given the
image, fused, their disagreement reported.

- ``method.py``      :class:`SegDiff`: the method table's entry
- ``training.py``    labelled slices, lesion slices oversampled; the UNet reference on the same batches
- ``prediction.py``  N masks per slice, back on the input grid, fused and thresholded
- ``evaluation.py``  SegDiff (1 and N samples) beside its UNet reference
"""
