"""``python -m anodiff.cli`` (also what ``torchrun -m anodiff.cli`` runs)."""

from anodiff.cli.main import main

main()
