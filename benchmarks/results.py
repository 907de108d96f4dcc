"""What the benchmarks share: running anodiff, reusing only what matches, and writing results files.

* A model or report folder is named by a digest of everything it depends on (the
  resolved config, the overrides, the data, anodiff's source code), so a benchmark
  reuses a folder only when all of that matches, and reruns otherwise.
* Each benchmark writes its tables to ``docs/results/<name>.md`` through
  :func:`write_results`, headed by the commit, the configs and the exact command,
  and a rerun rewrites the file. A table the README shows sits between
  ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->`` and is rewritten too.
  Paths are written relative to the repository: no machine's paths.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"


def anodiff_command() -> str:
    """The ``anodiff`` script beside this Python."""
    return str(Path(sys.executable).with_name("anodiff"))


def run(*command: str, quiet: bool = True) -> None:
    """Run a command, printing it first (relative paths); stdout hidden when ``quiet``."""
    print(f"$ {shlex.join(portable(c) for c in command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if quiet else None)


def digest(*parts) -> str:
    """12 hex characters identifying ``parts`` (JSON-serialisable, or paths)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.cache
def source_digest() -> str:
    """anodiff's source code (every module's text) as this benchmark started: a change to it, even without a new
    version, means rerunning."""
    package = ROOT / "anodiff"
    return digest([(str(p.relative_to(package)), p.read_text(encoding="utf-8")) for p in sorted(package.rglob("*.py"))])


def recipe_digest(config: Path, overrides, data: Path) -> str:
    """What a trained model depends on: the resolved config (comments and key order aside), its overrides, the
    training data folder (and the cases in it) and anodiff's source code."""
    from anodiff.config import config_to_dict, load_config

    resolved = config_to_dict(load_config(config, list(overrides)))
    cases = sorted(p.name for p in Path(data).iterdir()) if Path(data).is_dir() else []
    return digest(resolved, str(Path(data).resolve()), cases, source_digest())


def trained(config: Path, overrides, data: Path, parent: Path, *extra: str) -> Path:
    """A model folder for this config, overrides and data (``extra``: more ``anodiff train`` options): reused when
    one with the same digest finished (its meta.json holds a threshold), trained afresh otherwise."""
    folder = parent / f"model-{digest(recipe_digest(config, overrides, data), list(extra))}"
    meta = folder / "meta.json"
    if not (meta.is_file() and "threshold" in json.loads(meta.read_text(encoding="utf-8"))):
        run(anodiff_command(), "-q", "train", "--data", str(data), "--config", str(config), "--out", str(folder),
            "--overwrite", *extra, *overrides)
    return folder


def evaluated(model: Path, data: Path, overrides, parent: Path, *extra: str) -> dict:
    """``anodiff evaluate`` of ``model`` on ``data`` with scoring overrides: its report.json, reused when a report
    of the same model (its meta.json), data, overrides and source code finished."""
    meta = (model / "meta.json").read_text(encoding="utf-8")
    key = digest(meta, str(Path(data).resolve()), list(overrides), list(extra), source_digest())
    folder = parent / f"report-{key}"
    if not (folder / "report.json").is_file():
        run(anodiff_command(), "-q", "evaluate", "--model", str(model), "--data", str(data), "--out", str(folder),
            "--overwrite", *extra, *overrides)
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- results files


def portable(text: str) -> str:
    """``text`` with absolute paths made relative to the repository (no machine's paths in a results file)."""
    def relative(match: re.Match) -> str:
        path = match.group(0)
        return os.path.relpath(path, ROOT) if os.path.isabs(path) else path

    return re.sub(r"(?<![\w.])/[^\s'\"`|,;:)]+", relative, text)


def commit() -> str:
    """The checkout's commit, ``+changes`` when tracked files (other than the results) differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        # What the benchmarks write themselves (the README's tables, docs/results/) does not count as a change.
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!README.md", ":!docs/results"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" +changes" if dirty else "")


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text(encoding="utf-8"))
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    return f"CPU {name}, {os.cpu_count()} cores, torch {torch.__version__}"


def command_line() -> str:
    """How this script was started, as one would type it in the repository."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return portable(shlex.join(["python", script, *sys.argv[1:]]))


def write_results(name: str, title: str, body: str, *, configs: list[Path], minutes: float) -> Path:
    """``docs/results/<name>.md``: a header (the command, commit, date, machine, configs, run time) then ``body``."""
    config_lines = ", ".join(f"`{portable(str(c))}`" for c in configs) or "-"
    header = [f"# {title}", "",
              f"Written by `{command_line()}` at commit {commit()} on {datetime.date.today().isoformat()}; "
              f"{machine()}; {minutes:.0f} min. Configs: {config_lines}. Rerunning the command rewrites this file.",
              ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(header) + "\n" + portable(body).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {os.path.relpath(path, ROOT)}", flush=True)
    return path


def update_readme(name: str, text: str) -> None:
    """Replace the README's block between ``<!-- results:name -->`` and ``<!-- /results:name -->``."""
    readme = README.read_text(encoding="utf-8")
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in readme or end not in readme:
        return
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{portable(text).strip()}\n{end}{after}", encoding="utf-8")
    print(f"updated README.md ({name})", flush=True)
