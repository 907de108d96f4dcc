"""BIDS datasets: which files are a case's modalities, its lesion mask and brain mask, and how derivatives are named.

A BIDS dataset is a folder with ``dataset_description.json`` and subjects
``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]``
(the specification's naming rules: entities in a fixed order, then one suffix). A case
is one subject, or one session of it: ``sub-01_ses-02``. Its modalities come from the
anatomical suffixes (``T1w``, with a ``ce-`` entity the contrast-enhanced ``t1ce``;
``T2w``; ``FLAIR``; ``PDw``). A lesion mask and a brain mask come from any pipeline
under ``derivatives/``: ``_mask``, ``_dseg`` or ``_roi`` files whose ``label-`` or
``desc-`` entity names a lesion or tumour (``label-lesion``, ``desc-tumor``), or the
brain (``desc-brain_mask``). anodiff's own outputs (``desc-anomaly``) are not inputs.

This module reads names only (no voxels); :mod:`anodiff.data.cases` turns what it
finds into cases.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from anodiff.io import image_suffix, strip_image_suffix

DESCRIPTION, IGNORE = "dataset_description.json", ".bidsignore"
# Outputs without a BIDS suffix (a mask is `_mask`; a map of scores has none), declared in the derivatives'
# .bidsignore so that validators pass over them.
IGNORED_OUTPUTS = ("*_map.nii.gz", "*_map.json", "*_uncertainty.nii.gz", "*_uncertainty.json")
BIDS_VERSION = "1.10.0"
SUFFIX_MODALITIES = {"T1w": "t1", "T2w": "t2", "FLAIR": "flair", "PDw": "pd"}
LESION_WORDS = ("lesion", "tumor", "tumour", "abnormal")
MASK_SUFFIXES = ("mask", "dseg", "roi")
SKIPPED_FOLDERS = {"sourcedata", "code", "stimuli", "phenotype"}  # not subjects' data
# Entities in the specification's order, as far as anatomical images and their derivatives use them.
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "space", "res", "den", "label",
                "desc")
_ENTITY = re.compile(r"^(?P<key>[a-zA-Z]+)-(?P<value>[a-zA-Z0-9+]+)$")


@dataclass
class BidsFiles:
    """What a BIDS dataset holds, by case id (``sub-X`` or ``sub-X_ses-Y``)."""

    images: dict[str, dict[str, list[Path]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    labels: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    brains: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    entities: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def is_bids(root: Path) -> bool:
    """Whether ``root`` is a raw BIDS dataset (a derivatives dataset is not: it holds no scans to read)."""
    description = root / DESCRIPTION
    if not description.is_file():
        return False
    try:
        kind = json.loads(description.read_text()).get("DatasetType", "raw")
    except (ValueError, AttributeError):
        return True  # a malformed description is still BIDS; its files say the rest
    return kind != "derivative"


def parse(name: str) -> tuple[dict[str, str], str] | None:
    """(entities, suffix) of a BIDS file name, or None when it does not follow the naming rules."""
    parts = name.split("_")
    pairs = [_ENTITY.match(p) for p in parts[:-1]]
    if len(parts) < 2 or not all(pairs) or not re.fullmatch(r"[a-zA-Z0-9]+", parts[-1]):
        return None
    entities = {m["key"]: m["value"] for m in pairs}
    return (entities, parts[-1]) if "sub" in entities and len(entities) == len(pairs) else None


def case_id(entities: dict[str, str]) -> str:
    return "_".join(f"{key}-{entities[key]}" for key in ("sub", "ses") if key in entities)


def find(root: Path) -> BidsFiles:
    """The scans of ``root``'s subjects and the masks under ``root/derivatives``."""
    found = BidsFiles()
    for path in images_under(root, skip={"derivatives", *SKIPPED_FOLDERS}):
        parsed = parse(strip_image_suffix(path))
        if parsed is None:
            found.skipped.append((path, "not named by the BIDS rules (sub-<label>[_ses-<label>]..._<suffix>)"))
            continue
        entities, suffix = parsed
        if suffix not in SUFFIX_MODALITIES:
            found.skipped.append((path, f"BIDS suffix '{suffix}' is not a modality anodiff reads "
                                        f"({', '.join(SUFFIX_MODALITIES)})"))
            continue
        modality = "t1ce" if suffix == "T1w" and "ce" in entities else SUFFIX_MODALITIES[suffix]
        key = case_id(entities)
        found.images[key][modality].append(path)
        found.entities.setdefault(key, tuple((k, entities[k]) for k in ("sub", "ses") if k in entities))
    for path in images_under(root / "derivatives", skip=set()):
        parsed = parse(strip_image_suffix(path))
        if parsed is None or parsed[1] not in MASK_SUFFIXES:
            continue
        entities, _ = parsed
        named = f"{entities.get('label', '')} {entities.get('desc', '')}".lower()
        if "anomaly" in named:
            continue  # anodiff's own outputs
        if any(word in named for word in LESION_WORDS):
            found.labels[case_id(entities)].append(path)
        elif entities.get("desc", "").lower() == "brain" and parsed[1] == "mask":
            found.brains[case_id(entities)].append(path)
    return found


def images_under(root: Path, *, skip: set[str]):
    """Image files under ``root`` (any depth), sorted, without hidden entries or the ``skip`` folders."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in skip:
            continue
        if entry.is_dir():
            yield from images_under(entry, skip=skip)
        elif image_suffix(entry) is not None:
            yield entry


def derivative_path(out: Path, entities: tuple[tuple[str, str], ...], desc: str, suffix: str) -> Path:
    """``out/sub-X/[ses-Y/]anat/sub-X[_ses-Y]_desc-<desc>_<suffix>.nii.gz``: a derivative of one case."""
    values = dict(entities)
    folder = out / f"sub-{values['sub']}"
    if "ses" in values:
        folder = folder / f"ses-{values['ses']}"
    stem = "_".join(f"{key}-{value}" for key, value in (*entities, ("desc", desc)))
    return folder / "anat" / f"{stem}_{suffix}.nii.gz"


def dataset_description(version: str, source: Path | None) -> dict:
    """``dataset_description.json`` of a derivatives dataset anodiff generated from the dataset ``source``."""
    description = {"Name": "anodiff outputs", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "anodiff", "Version": version,
                                    "Description": "masks and maps from diffusion models of brain MRI"}]}
    if source is not None:
        description |= {"SourceDatasets": [{"URL": absolute(source).as_uri()}],
                        "DatasetLinks": {"raw": absolute(source).as_uri()}}
    return description


def dataset_root(path: Path) -> Path | None:
    """The BIDS dataset a file belongs to: the nearest folder above it with ``dataset_description.json`` (a
    linked scan belongs to the dataset that links it)."""
    return next((folder for folder in absolute(path).parents if (folder / DESCRIPTION).is_file()), None)


def absolute(path: Path) -> Path:
    """``path`` made absolute, its links kept (a dataset may link its scans from elsewhere)."""
    return Path(os.path.abspath(path))


def source_uri(path: Path) -> str:
    """A BIDS URI of an input scan, ``bids:raw:<path in its dataset>`` (``raw`` is named in the derivatives'
    ``DatasetLinks``); a plain file URI outside a dataset."""
    root = dataset_root(path)
    if root is None:
        return absolute(path).as_uri()
    return f"bids:raw:{absolute(path).relative_to(root).as_posix()}"


def sidecar_path(image: Path) -> Path:
    """The JSON sidecar beside a NIfTI file."""
    return image.with_name(strip_image_suffix(image) + ".json")
