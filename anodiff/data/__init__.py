"""Data layer: case discovery, MONAI preprocessing chains, slice data sets, synthetic cohort."""

from anodiff.data.cases import Case, Discovery, Skipped, discover, select_modalities

__all__ = ["Case", "Discovery", "Skipped", "discover", "select_modalities"]
