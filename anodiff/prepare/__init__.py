"""Raw scans -> analysis-ready cases, and outputs back onto the raw scans' grids.

:func:`prepare_cases` runs :func:`~anodiff.prepare.case.prepare_case` over a
data folder, one case at a time, a failing case reported and the others kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from anodiff import __version__
from anodiff.data import bids
from anodiff.data.cases import Case
from anodiff.errors import DataError
from anodiff.outputs import write_json
from anodiff.prepare.case import Options, case_folder, prepare_case, read_record, reference_of, to_raw_grid
from anodiff.progress import Progress

__all__ = ["Options", "Outcome", "prepare_case", "prepare_cases", "preparation_record", "read_options",
           "read_record", "reference_of", "to_raw_grid", "RECORD"]

log = logging.getLogger(__name__)
RECORD = "prepare.json"  # at a prepared data set's root: the options, which a model trained on it keeps
# What a prepared BIDS derivatives dataset holds that no BIDS rule names: the records, transforms and QC figures.
BIDS_IGNORED = ("prepare/", RECORD)


@dataclass(frozen=True)
class Outcome:
    """One case's preparation: its folder, or why it could not be prepared."""

    case: str
    folder: Path | None = None
    error: str | None = None
    kept: bool = False  # prepared before, from the same files with the same options


def prepare_cases(cases: list[Case], out: Path, options: Options = Options(), *, overwrite: bool = False,
                  progress: Progress | None = None) -> list[Outcome]:
    """Prepare every case into ``out``; a case already there is refused unless ``overwrite``."""
    options.check()
    before = read_options(out)
    if before is not None and before != options and not overwrite:
        raise DataError(f"{out}: prepared with other options ({asdict(before)}); pass --overwrite to prepare its "
                        "cases again with these")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RECORD, {"options": asdict(options)})
    bids.describe(out, cases, __version__, "scans prepared for anodiff: bias-corrected, registered, brain-extracted",
                  BIDS_IGNORED)
    outcomes = []
    for done, case in enumerate(cases, start=1):
        outcomes.append(_one(case, out, options, overwrite))
        if progress is not None:
            progress(done, len(cases), case.id)
    return outcomes


def _one(case: Case, out: Path, options: Options, overwrite: bool) -> Outcome:
    target = case_folder(out, case)
    if target.exists() and not overwrite:
        # A case folder is renamed into place whole, so one that is there is complete: a rerun keeps it.
        if _made_from(target) == ({m: str(p) for m, p in case.images.items()}, asdict(options)):
            return Outcome(case.id, folder=target, kept=True)
        return Outcome(case.id, error=f"{target}: already prepared, from other files or with other options "
                                      "(pass --overwrite to replace it)")
    try:
        return Outcome(case.id, folder=prepare_case(case, out, options))
    except (DataError, RuntimeError, ValueError) as err:  # SimpleITK raises RuntimeError
        reason = " ".join(str(err).split())[:300]
        log.warning("case %s not prepared: %s", case.id, reason)
        return Outcome(case.id, error=reason)


def _made_from(folder: Path) -> tuple[dict, dict] | None:
    """(raw files by modality, options) a prepared case folder was made from; None when unreadable."""
    try:
        record = read_record(folder)
        return record["raw"], record["options"]
    except (DataError, KeyError, TypeError):
        return None


def preparation_record(root: Path) -> dict | None:
    """What a model trained on ``root`` keeps of its preparation (None: the data were not prepared)."""
    options = read_options(root)
    return None if options is None else {"options": asdict(options), "template": "mni152_2009a"}


def read_options(root: Path) -> Options | None:
    """The options a prepared data set was made with, or None when ``root`` was not made by prepare."""
    path = Path(root) / RECORD
    if not path.is_file():
        return None
    try:
        return Options(**json.loads(path.read_text(encoding="utf-8"))["options"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a readable preparation record ({err})") from err
