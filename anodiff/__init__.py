"""anodiff: find and outline what is abnormal in brain MRI with diffusion models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anodiff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
