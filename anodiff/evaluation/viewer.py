"""The report's 3D viewer: each case's scan, map and masks in NiiVue, inside the one self-contained HTML file.

At evaluation a case's volumes are kept small (:func:`viewer_volumes`): cropped to
the brain, at most :data:`VIEWER_SIZE` voxels along any axis, 8 bits (a map scaled
so that 255 is its colour bar's top), saved as ``overlays/<case>_volumes.npz`` so
that ``anodiff report`` can draw the page again. The page embeds them as NIfTI and
draws them with NiiVue (BSD-2, bundled: ``assets/niivue.umd.js``, nothing fetched):
three linked planes and a 3D render, scrolled with the mouse wheel, with controls
for the map's opacity and threshold and for each mask. The first case's viewer
opens with the page; the others open on a click (a browser allows a few WebGL
canvases at a time).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from anodiff.figures import VOLUMES_SUFFIX, Outline, Panel, brain_box
from anodiff.outputs import replaced_atomically

VIEWER_SIZE = 96  # voxels along the longest axis of a viewer's volumes
NIIVUE = Path(__file__).parent / "assets" / "niivue.umd.js"
SUFFIX = VOLUMES_SUFFIX
HEAT = {"inferno": "inferno", "magma": "magma", "viridis": "viridis"}  # the figures' colour maps, NiiVue's names
MASK_COLOURS = ("green", "red", "blue", "violet")  # NiiVue colour maps of the outlines, in the figures' order


def viewer_volumes(image: np.ndarray, panels: list[Panel], outlines: list[Outline], brain: np.ndarray,
                   spacing, threshold: float | None = None) -> dict[str, np.ndarray]:
    """The case for the viewer (RAS volumes as :func:`anodiff.figures.case_views` takes them): ``image`` in
    [0, 1], the first coloured panel (the map) and every outline, cropped to the brain, subsampled to at most
    :data:`VIEWER_SIZE` voxels an axis, as uint8; ``meta`` holds names, colour maps, the map's top, the
    ``threshold`` the viewer starts the map at (the mask's: what is shown is what was flagged) and the voxel
    size."""
    box = brain_box(brain)
    step = max(1, -(-max(s.stop - s.start for s in box) // VIEWER_SIZE))
    cut = lambda volume: np.ascontiguousarray(volume[box][::step, ::step, ::step])  # noqa: E731
    volumes = {"image": to_uint8(cut(image), 1.0)}
    heat = next((panel for panel in panels if panel[2] != "gray"), None)
    meta = {"spacing": [float(s) * step for s in spacing], "masks": [], "map": None}
    if heat is not None:
        name, volume, cmap, units, top = heat
        inside = volume[brain]
        top = top if top is not None else (float(np.percentile(inside, 99.9)) if inside.size else 1.0)
        volumes["map"] = to_uint8(cut(volume), top)
        meta["map"] = {"name": name, "colormap": HEAT.get(cmap, "warm"), "units": units, "top": top,
                       "threshold": min(float(threshold), top) if threshold is not None else 0.0}
    for index, (name, mask, _) in enumerate(outlines):
        volumes[f"mask{index}"] = cut(mask).astype(np.uint8)
        meta["masks"].append({"name": name, "colormap": MASK_COLOURS[index % len(MASK_COLOURS)]})
    return volumes | {"meta": np.array(json.dumps(meta))}


def to_uint8(volume: np.ndarray, top: float) -> np.ndarray:
    """``volume`` / ``top`` in [0, 1] as uint8 0-255."""
    return np.round(np.clip(np.nan_to_num(volume / max(top, 1e-12)), 0, 1) * 255).astype(np.uint8)


def save_viewer_volumes(folder: Path, name: str, volumes: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{SUFFIX}"
    with replaced_atomically(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **volumes)
    return path


def nifti_url(volume: np.ndarray, spacing) -> str:
    """A data URL of ``volume`` as a gzipped NIfTI file (RAS, ``spacing`` mm voxels)."""
    image = nib.Nifti1Image(volume, np.diag([*spacing, 1.0]))
    image.header.set_xyzt_units("mm")
    data = gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
    return "data:application/gzip;base64," + base64.b64encode(data).decode("ascii")


def viewer_section(path: Path, index: int, title: str) -> str:
    """One case's viewer: its canvas, controls and volumes (a JSON script block the page's script reads)."""
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        layers = [{"url": nifti_url(stored["image"], meta["spacing"]), "name": "image.nii.gz", "colormap": "gray",
                   "cal_min": 0, "cal_max": 255, "label": "scan"}]
        if meta["map"] is not None:
            layers.append({"url": nifti_url(stored["map"], meta["spacing"]), "name": "map.nii.gz",
                           "colormap": meta["map"]["colormap"], "cal_max": 255, "opacity": 0.6,
                           "cal_min": meta["map"].get("threshold", 0.0) / max(meta["map"]["top"], 1e-12) * 255,
                           "threshold": meta["map"].get("threshold", 0.0), "label": meta["map"]["name"],
                           "top": meta["map"]["top"], "units": meta["map"]["units"]})
        for i, mask in enumerate(meta["masks"]):
            layers.append({"url": nifti_url(stored[f"mask{i}"], meta["spacing"]), "name": f"mask{i}.nii.gz",
                           "colormap": mask["colormap"], "cal_min": 0.5, "cal_max": 1, "opacity": 0.8,
                           "label": mask["name"], "mask": True})
    data = json.dumps(layers).replace("</", "<\\/")
    return (f"<section class='viewer' id='case-viewer-{index}'><h3>{html.escape(title)}</h3>"
            f"<div class='controls' id='controls-{index}'></div>"
            f"<div class='canvas'><canvas id='canvas-{index}'></canvas></div>"
            f"<button onclick='anodiffOpen({index})' id='open-{index}'>open the 3D viewer</button>"
            f"<script type='application/json' id='layers-{index}'>{data}</script></section>")


def viewer_script() -> str:
    """NiiVue and the page's few lines: open a case's viewer, its controls."""
    return f"<script>{NIIVUE.read_text(encoding='utf-8')}</script>\n<script>{OPEN_VIEWER}</script>"


STYLE = """
.viewer { margin: 1em 0 2em; }
.viewer .canvas { width: 100%; height: 520px; background: #000; display: none; }
.viewer canvas { width: 100%; height: 100%; }
.controls label { margin-right: 1.2em; font-size: 0.9em; }
"""

OPEN_VIEWER = """
async function anodiffOpen(index) {
  const layers = JSON.parse(document.getElementById('layers-' + index).textContent);
  const button = document.getElementById('open-' + index);
  if (button) button.remove();
  const canvas = document.getElementById('canvas-' + index);
  canvas.parentElement.style.display = 'block';
  const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, multiplanarForceRender: true,
                                 crosshairColor: [0.3, 0.8, 1, 0.8], crosshairWidth: 1 });
  await nv.attachTo('canvas-' + index);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  await nv.loadVolumes(layers.map(l => ({ url: l.url, name: l.name, colormap: l.colormap, opacity: l.opacity ?? 1,
                                          cal_min: l.cal_min, cal_max: l.cal_max })));
  const controls = document.getElementById('controls-' + index);
  layers.forEach((layer, i) => {
    if (i === 0) return;
    const label = document.createElement('label');
    if (layer.mask) {
      label.innerHTML = `<input type='checkbox' checked> ${layer.label}`;
      label.firstChild.onchange = e => nv.setOpacity(i, e.target.checked ? layer.opacity : 0);
    } else {
      label.innerHTML = `${layer.label}: opacity `
        + `<input type='range' min='0' max='1' step='0.05' value='${layer.opacity}'>`
        + ` threshold <input type='range' min='0' max='${layer.top}' step='${layer.top / 100}'`
        + ` value='${layer.threshold}'> <span>${layer.threshold.toPrecision(3)} ${layer.units || ''}</span>`;
      const [opacity, threshold] = label.querySelectorAll('input');
      const shown = label.querySelector('span');
      opacity.oninput = e => nv.setOpacity(i, Number(e.target.value));
      threshold.oninput = e => {
        nv.volumes[i].cal_min = Number(e.target.value) / layer.top * 255;
        shown.textContent = Number(e.target.value).toPrecision(3) + ' ' + (layer.units || '');
        nv.updateGLVolume();
      };
    }
    controls.appendChild(label);
  });
  canvas.dataset.loaded = 'true';
}
window.addEventListener('load', () => { if (document.getElementById('layers-0')) anodiffOpen(0); });
"""
