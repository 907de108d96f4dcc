"""The ``anodiff`` command line (installed as ``anodiff.cli``): parse, call the library, render."""
