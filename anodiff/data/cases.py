"""Find the cases in a data set folder or datalist, whatever its layout.

A case is a set of co-registered modalities and an optional label. Layouts
recognised by file name (any folder depth up to ``max_depth``):

* BraTS 2020/2021: ``<id>_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` (labels 1/2/4),
  and ``<id>_brain`` or ``<id>_brainmask``: the case's brain mask, not a modality;
* BraTS 2023+: ``<id>-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg`` (labels 1/2/3);
* IXI: ``IXI002-Guys-0828-T1`` (healthy volumes, modalities t1/t2/pd/mra);
* ``<id>_image``: a case with one unnamed modality (how ``anodiff prepare`` writes a single scan);
* any other NIfTI/MetaImage/NRRD file: a case of its own, one modality;
* BIDS (a folder with ``dataset_description.json``): ``sub-<label>[_ses-<label>]`` cases, their ``T1w``,
  ``T2w``, ``FLAIR`` and ``PDw`` scans, lesion and brain masks from ``derivatives/`` (:mod:`anodiff.data.bids`);
* a MONAI-style datalist JSON (``{"training": [{"image": ..., "label": ...}]}``,
  or one key per modality), paths relative to the JSON file.

A case folder's ``prepare/`` sub-folder (what ``anodiff prepare`` keeps: transforms,
QC figures) is not searched. Modality names are lower case and follow BraTS 2021 (``flair``, ``t1``, ``t1ce``,
``t2``). Data sets with fewer modalities are normal. Discovery reads no voxels;
what cannot be used is returned with the reason, never silently dropped.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from anodiff.data import bids
from anodiff.errors import DataError
from anodiff.io import image_suffix, strip_image_suffix

BRATS2023_MODALITIES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
_BRATS2021 = re.compile(r"^(?P<id>.+)_(?P<mod>flair|t1ce|t1|t2|pd|image|seg|brainmask|brain)$", re.IGNORECASE)
BRAIN_KEYS = ("brain", "brainmask")
_BRATS2023 = re.compile(r"^(?P<id>.+)-(?P<mod>t2f|t1n|t1c|t2w|seg)$", re.IGNORECASE)
_IXI = re.compile(r"^(?P<id>IXI\d+-[A-Za-z]+-\d+)-(?P<mod>T1|T2|PD|MRA|DTI)$")
_IGNORED_NAMES = {"cohort.json", "prepare.json", "readme.md", "readme.txt", ".ds_store"}
_IGNORED_FOLDERS = {"prepare"}


class UnsafeCaseId(DataError):
    """A case id that cannot name a file or folder of its own (outputs are named after the case)."""


def check_case_id(case_id: str) -> str:
    """``case_id`` when it is a plain name: outputs and prepared folders are named after it, so an id with a
    path separator, ``.``/``..``, a leading dot or no characters could write (or remove) outside the output
    folder. Raises :class:`UnsafeCaseId` naming the id."""
    if not isinstance(case_id, str) or not case_id.strip():
        raise UnsafeCaseId(f"case id {case_id!r} is empty")
    if any(c in case_id for c in "/\\\0:") or case_id.startswith("."):
        raise UnsafeCaseId(f"case id {case_id!r} is not a plain name (no '/', '\\', ':', NUL or leading '.'; "
                           "outputs are named after it)")
    return case_id


@dataclass(frozen=True)
class Case:
    """One subject: modality name -> image path, the label path and brain mask path if any.

    ``id`` is a plain name (:func:`check_case_id`): every output of the case is named after it.
    """

    id: str
    images: dict[str, Path]
    label: Path | None = None
    layout: str = "folder"
    brain: Path | None = None
    entities: tuple[tuple[str, str], ...] = ()  # BIDS: ("sub", "01"), ("ses", "02"); outputs are named by them

    def __post_init__(self) -> None:
        check_case_id(self.id)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.images)


@dataclass(frozen=True)
class Skipped:
    """Something found under the data root that is not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Discovery:
    """The cases found under a root, and what was skipped."""

    root: Path
    cases: list[Case]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(sorted({c.layout for c in self.cases}))


def discover(root: str | Path, *, max_depth: int = 3, default_modality: str = "image") -> Discovery:
    """Find the cases under a folder, or listed in a datalist JSON file.

    Raises:
        DataError: when ``root`` does not exist or is neither a folder nor a JSON file.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".json":
            raise DataError(f"{root}: give a data folder or a datalist .json file")
        return _discover_datalist(root)
    return _discover_folder(root, max_depth=max_depth, default_modality=default_modality)


def select_modalities(cases: list[Case], modalities: tuple[str, ...] | None) -> tuple[str, ...]:
    """The modalities to use: the requested ones, or those every case has (in BraTS order)."""
    if not cases:
        raise DataError("no cases to choose modalities from")
    if modalities:
        missing = [c.id for c in cases if not set(modalities) <= set(c.images)]
        if missing:
            raise DataError(
                f"{len(missing)} case(s) lack one of the modalities {list(modalities)} "
                f"(first: {missing[0]} has {list(next(c for c in cases if c.id == missing[0]).images)})"
            )
        return tuple(modalities)
    common = set.intersection(*(set(c.images) for c in cases))
    if not common:
        raise DataError("the cases share no modality; choose one with data.modalities")
    order = ["flair", "t1", "t1ce", "t2", "pd"]
    return tuple(sorted(common, key=lambda m: (order.index(m) if m in order else len(order), m)))


# ---------------------------------------------------------------- folders


def link_cases(cases: list[Path], folder: Path) -> Path:
    """``folder`` holding a symbolic link to each case folder (a split of a data set without copying it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        target = folder / case.name
        if not target.exists():
            target.symlink_to(case.resolve(), target_is_directory=True)
    return folder


def _discover_bids(root: Path) -> Discovery:
    found = bids.find(root)
    skipped = [Skipped(path, reason) for path, reason in found.skipped]
    cases = []
    for case_id, files in sorted(found.images.items()):
        duplicated = {m: ps for m, ps in files.items() if len(ps) > 1}
        labels, brains = found.labels.get(case_id, []), found.brains.get(case_id, [])
        problem = (f"{len(next(iter(duplicated.values())))} files for modality '{next(iter(duplicated))}' (acq- or "
                   "run- entities; keep one per case)" if duplicated else
                   f"{len(labels)} lesion masks in derivatives/" if len(labels) > 1 else None)
        if problem:
            skipped.append(Skipped(next(iter(files.values()))[0].parent, f"case {case_id}: {problem}"))
            continue
        cases.append(Case(id=case_id, images={m: ps[0] for m, ps in sorted(files.items())},
                          label=labels[0] if labels else None, layout="bids", brain=brains[0] if brains else None,
                          entities=found.entities[case_id]))
    for case_id in sorted(set(found.labels) - set(found.images)):
        skipped.append(Skipped(found.labels[case_id][0], f"case {case_id}: a lesion mask without any image"))
    return Discovery(root=root, cases=cases, skipped=skipped)


def _discover_folder(root: Path, *, max_depth: int, default_modality: str) -> Discovery:
    if bids.is_bids(root):
        return _discover_bids(root)
    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    layouts: dict[str, str] = {}
    skipped: list[Skipped] = []
    for path in _walk(root, max_depth):
        if image_suffix(path) is None:
            if path.name.lower() not in _IGNORED_NAMES:
                skipped.append(Skipped(path, "not an image file (.nii, .nii.gz, .mha, .mhd, .nrrd)"))
            continue
        case_id, modality, layout = _parse_name(path, root, default_modality)
        groups[case_id][modality].append(path)
        layouts.setdefault(case_id, layout)

    cases = []
    for case_id in sorted(groups):
        files = groups[case_id]
        duplicated = {m: ps for m, ps in files.items() if len(ps) > 1}
        if duplicated:
            mod, paths = next(iter(duplicated.items()))
            skipped.append(Skipped(paths[0].parent, f"case {case_id}: {len(paths)} files for modality '{mod}'"))
            continue
        label = files.pop("seg", [None])[0]
        brains = [p for key in BRAIN_KEYS for p in files.pop(key, [])]
        if not files:
            what = "label" if label else "brain mask"
            skipped.append(Skipped(label or brains[0], f"case {case_id}: a {what} without any image"))
            continue
        images = {m: ps[0] for m, ps in sorted(files.items())}
        cases.append(Case(id=case_id, images=images, label=label, layout=layouts[case_id],
                          brain=brains[0] if brains else None))
    return Discovery(root=root, cases=cases, skipped=skipped)


def _walk(root: Path, max_depth: int):
    """Files under root up to max_depth levels, sorted, skipping hidden entries."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and max_depth > 1 and entry.name not in _IGNORED_FOLDERS:
            yield from _walk(entry, max_depth - 1)
        elif entry.is_file():
            yield entry


def _parse_name(path: Path, root: Path, default_modality: str) -> tuple[str, str, str]:
    """(case id, modality, layout) from a file name."""
    stem = strip_image_suffix(path)
    if m := _BRATS2023.match(stem):
        mod = m["mod"].lower()
        return m["id"], BRATS2023_MODALITIES.get(mod, mod), "brats2023"
    if m := _BRATS2021.match(stem):
        return m["id"], m["mod"].lower(), "brats2021"
    if m := _IXI.match(stem):
        return m["id"], m["mod"].lower(), "ixi"
    # Any other file is a case of its own; its folder path, joined by '_', keeps ids unique.
    relative = path.relative_to(root).parent / stem
    return "_".join(relative.parts), default_modality, "folder"


# ---------------------------------------------------------------- datalists


def _discover_datalist(path: Path) -> Discovery:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON datalist ({err})") from err
    if isinstance(content, list):
        entries = content
    elif isinstance(content, dict):
        sections = [k for k in ("training", "validation", "test") if k in content]
        if not sections:
            raise DataError(f"{path}: a datalist needs a 'training', 'validation' or 'test' list")
        entries = [e for k in sections for e in content[k]]
    else:
        raise DataError(f"{path}: a datalist must be a JSON object or list")
    names = content.get("modalities") if isinstance(content, dict) else None

    root = path.parent.resolve()
    cases, skipped = [], []
    for index, entry in enumerate(entries):
        try:
            cases.append(_datalist_case(entry, index, root, names))
        except UnsafeCaseId as err:  # refused outright: outputs would be named after it
            raise DataError(f"{path}: entry {index}: {err}") from None
        except DataError as err:
            skipped.append(Skipped(path, f"entry {index}: {err}"))
    return Discovery(root=root, cases=cases, skipped=skipped)


def _datalist_case(entry, index: int, root: Path, names: list[str] | None) -> Case:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict):
        raise DataError("an entry must be an object or a path")
    images: dict[str, Path] = {}
    image = entry.get("image")
    if isinstance(image, str):
        images[(names or ["image"])[0].lower()] = _inside(root, image)
    elif isinstance(image, list):
        if names and len(names) != len(image):
            raise DataError(f"{len(image)} images but {len(names)} modality names")
        for i, p in enumerate(image):
            images[names[i].lower() if names else f"image{i}"] = _inside(root, p)
    for key, value in entry.items():
        if key not in ("image", "label", "id") and isinstance(value, str):
            images[key.lower()] = _inside(root, value)
    if not images:
        raise DataError("no image path")
    label = _inside(root, entry["label"]) if entry.get("label") else None
    case_id = str(entry.get("id") or strip_image_suffix(next(iter(images.values()))))
    return Case(id=case_id, images=images, label=label, layout="datalist")


def _inside(root: Path, relative: str) -> Path:
    """Resolve a datalist path against root, refusing one that escapes it."""
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"path '{relative}' lies outside the data root {root}")
    return resolved
