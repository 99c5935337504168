"""The Gradio app: generate crystals, rank infill candidates and check stability in a browser.

`build_app(model)` returns the `gradio.Blocks` that `hf-crystal app` serves and the Space in `space/` runs. The
model calls go through `CrystalApp` (structures and tables in, structures and tables out, no Gradio), so they
are tested without a browser; the Gradio handlers only turn its `AppInputError`s into messages in the page
(`gradio.Error`, never a traceback) and its results into component values. Requests to the models are queued
and run one at a time (one shared concurrency slot).

The 3D views are 3Dmol.js (BSD-3-Clause), vendored from npm into `hf_crystal/static/3dmol` (see its README) and
served by the app itself: the page loads nothing from another host. Each view is one WebGL context, and
browsers keep about 16 at a time, so a request is capped at `MAX_CRYSTALS_LIMIT` crystals.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from pymatgen.core import Composition, Structure
from pymatgen.io.cif import CifWriter

from hf_crystal.embedded import DEFAULT_MODEL, refiner_for

__all__ = [
    "DEFAULT_MAX_CRYSTALS",
    "DEFAULT_MAX_SITES",
    "EXAMPLES_DIR",
    "MAX_CRYSTALS_LIMIT",
    "STATIC_DIR",
    "AppInputError",
    "Crystal",
    "CrystalApp",
    "build_app",
    "crystal_gallery",
    "read_conditions",
    "read_structure",
    "symmetrized_cif",
]

STATIC_DIR = Path(__file__).with_name("static")
EXAMPLES_DIR = STATIC_DIR / "examples"
VIEWER_JS = STATIC_DIR / "3dmol" / "3Dmol-min.js"
#: Crystals per request by default, and the most a request may ask for (one WebGL context per 3D view).
DEFAULT_MAX_CRYSTALS = 8
MAX_CRYSTALS_LIMIT = 12
#: The embedded default was trained on MP-20, whose structures have at most 20 sites.
DEFAULT_MAX_SITES = 20
#: Largest structure the infill tab takes (its prompt grows with every site).
MAX_INFILL_SITES = 64
#: Symmetry tolerance (Å) of the space groups shown and of the CIFs written, as `hf-crystal evaluate` uses.
SYMPREC = 0.1
MAX_TEMPERATURE = 2.0
#: Queue of every model call (generation, infill, relaxation): one at a time.
_MODEL_QUEUE = "model"


class AppInputError(ValueError):
    """A request the app refuses; the message says what was wrong and is shown in the app as it is."""


@dataclass
class Crystal:
    """One generated (or substituted) crystal as the app shows it.

    Args:
        index (`int`): Its number in the request, from 1.
        structure (`Structure` or None): What the LLM wrote (or the substituted structure of an infill candidate),
            None when the text did not parse.
        refined (`Structure` or None): The refiner's structure, None without a refiner (or without a structure).
        valid (`bool`): Structural and compositional validity of `structure`.
        refined_valid (`bool` or None): The same of `refined`, None without a refiner.
        error (`str` or None): Why the text did not parse.
        e_hull (`float` or None): Energy above the shipped hull after a CHGNet relaxation (eV/atom).
        stability_note (`str` or None): Why there is no E_hull, or a caveat about it.
        label (`str`): A first line for its card (an infill candidate's element and probability).
    """

    index: int
    structure: Structure | None
    refined: Structure | None = None
    valid: bool = False
    refined_valid: bool | None = None
    error: str | None = None
    e_hull: float | None = None
    stability_note: str | None = None
    label: str = ""

    @property
    def shown(self) -> Structure | None:
        """The structure the app shows and writes: the refined one when there is one."""
        return self.refined if self.refined is not None else self.structure

    @functools.cached_property
    def cif(self) -> str | None:
        """The symmetrized CIF of the shown structure (`symmetrized_cif`), None without one."""
        return symmetrized_cif(self.shown) if self.shown is not None else None

    @property
    def formula(self) -> str:
        return self.shown.composition.reduced_formula if self.shown is not None else "(not parsed)"


def read_conditions(
    formula: str | None,
    formula_units: str | int | None = "any",
    spacegroup: str | float | None = None,
    e_above_hull: str | float | None = None,
    band_gap: str | float | None = None,
    *,
    max_sites: int = DEFAULT_MAX_SITES,
) -> dict[str, Any]:
    """The pipeline's condition dict from the Generate tab's fields (text or numbers; empty ones are left out);
    AppInputError says which field is wrong and how to fix it."""
    from hf_crystal.prompts import condition_cells

    conditions: dict[str, Any] = {}
    formula = (formula or "").strip()
    if formula:
        conditions["formula"] = formula
        units = str(formula_units if formula_units is not None else "any").strip()
        if units.isdigit() and int(units) >= 1:
            conditions["formula_units"] = int(units)
        elif units in ("any", "cell"):
            conditions["formula_units"] = units
        else:
            raise AppInputError(
                f'formula units must be "any", "cell" or a whole number Z >= 1, got {units!r}'
            )
    number = _number(spacegroup, "space group")
    if number is not None:
        if not number.is_integer() or not 1 <= number <= 230:
            raise AppInputError(f"space group must be a whole number from 1 to 230, got {number:g}")
        conditions["spacegroup"] = int(number)
    for key, value, what in (("e_above_hull", e_above_hull, "E_hull"), ("band_gap", band_gap, "band gap")):
        number = _number(value, what)
        if number is not None:
            if number < 0:
                raise AppInputError(f"{what} must be >= 0, got {number:g}")
            conditions[key] = number
    try:
        cells = condition_cells(conditions, "any", max_sites)[0]
    except ValueError as err:  # unreadable formula, too many atoms for the formula units asked
        raise AppInputError(str(err)) from None
    for cell in cells:  # "cell" takes the counts as written
        if "formula" in cell and Composition(cell["formula"]).num_atoms > max_sites:
            atoms = int(Composition(cell["formula"]).num_atoms)
            raise AppInputError(
                f"{cell['formula']} has {atoms} atoms, more than max_sites={max_sites}: use fewer formula units"
            )
    return conditions


def _number(value: str | float | None, what: str) -> float | None:
    """A field's number, None when it is empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except ValueError:
        raise AppInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise AppInputError(f"{what} must be a finite number, got {value!r}")
    return number


def read_structure(source: str | os.PathLike | None) -> Structure:
    """The structure of a CIF file (path) for the Infill tab; AppInputError when it cannot be read."""
    if source is None:
        raise AppInputError("upload a CIF file or pick an example first")
    path = Path(source)
    try:
        structure = Structure.from_file(path) if path.suffix.lower() == ".cif" else None
    except Exception as err:  # pymatgen raises ValueError, KeyError, IndexError... on a broken CIF
        raise AppInputError(f"could not read a crystal structure from {path.name}: {err}") from None
    if structure is None:
        raise AppInputError(f"{path.name} is not a CIF file (.cif)")
    if not structure.is_ordered:
        raise AppInputError(
            f"{path.name} has partially occupied sites; the model writes ordered crystals only"
        )
    if len(structure) > MAX_INFILL_SITES:
        raise AppInputError(
            f"{path.name} has {len(structure)} sites; the app takes at most {MAX_INFILL_SITES}"
        )
    return structure


def symmetrized_cif(structure: Structure) -> str:
    """CIF text with the symmetry spglib finds at `SYMPREC` (`CifWriter(symprec=0.1)`), or as P1 when spglib
    finds none (degenerate cells)."""
    try:
        return str(CifWriter(structure, symprec=SYMPREC))
    except Exception:  # spglib gives up on some badly distorted cells
        return str(CifWriter(structure))


def _spacegroup(structure: Structure | None) -> str:
    """ "Pm-3m (221)" at `SYMPREC`, "?" when spglib finds none, "-" without a structure."""
    if structure is None:
        return "-"
    try:
        symbol, number = structure.get_space_group_info(symprec=SYMPREC)
    except Exception:  # spglib gives up on some badly distorted cells
        return "?"
    return f"{symbol} ({number})"


class CrystalApp:
    """The models behind the app: generation (with and without the refiner), infill, and lazily CHGNet and the
    shipped hull for the stability button.

    Args:
        model (`str`): Folder or Hub id of a model or LoRA adapter (default: the embedded default, offline).
        refiner (`str` or None): FlowLLM refiner (folder or Hub id); "auto" for the one the model comes with
            (only the embedded default has one), None for none.
        max_sites (`int`): The most sites a generated crystal may have.
        relaxer: A `BatchedRelaxer` for the stability button (default: CHGNet, loaded on first use).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        refiner: str | None = "auto",
        max_sites: int = DEFAULT_MAX_SITES,
        relaxer=None,
    ):
        from transformers import pipeline

        from hf_crystal.loading import load_crystal_model

        self.model_name = str(model)
        if refiner == "auto":
            refiner = refiner_for(self.model_name)
        loaded, tokenizer = load_crystal_model(self.model_name, merge=True)
        self.generator = pipeline("crystal-generation", model=loaded, tokenizer=tokenizer, refiner=None)
        self.refining = None
        if refiner is not None:
            from hf_crystal.refiner import CrystalRefinerPipeline

            self.refining = pipeline(
                "crystal-generation",
                model=loaded,
                tokenizer=tokenizer,
                refiner=CrystalRefinerPipeline.from_pretrained(refiner),
            )
        self.infiller = pipeline("crystal-infill", model=loaded, tokenizer=tokenizer)
        self.refiner_name = refiner
        self.max_sites = max_sites
        self._relaxer = relaxer
        self._hull = None

    def generate(
        self,
        conditions: dict[str, Any],
        num: int,
        *,
        temperature: float = 0.9,
        refine: bool = True,
        seed: int | None = None,
    ) -> list[Crystal]:
        """`num` crystals for `conditions` (`read_conditions`), refined when `refine` and there is a refiner."""
        pipe = self.refining if refine and self.refining is not None else self.generator
        options = {"num_return_sequences": num, "max_sites": self.max_sites, "temperature": temperature}
        # A ValueError here is a request the model refuses (e.g. a whole cell of more than max_sites atoms).
        try:
            samples = pipe(dict(conditions), seed=seed, **options)
        except ValueError as err:
            raise AppInputError(str(err)) from None
        crystals = []
        for i, sample in enumerate(samples, start=1):
            crystal = Crystal(i, sample["structure"], valid=bool(sample["valid"]), error=sample.get("error"))
            if pipe is self.refining:
                crystal.refined = sample["refined_structure"]
                crystal.refined_valid = bool(sample["refined_valid"])
            crystals.append(crystal)
        return crystals

    def infill(self, structure: Structure, element: str, *, top_k: int = 10) -> list[dict]:
        """The `top_k` elements the model ranks highest for the masked `element`: dicts of element, probability
        and the substituted structure, best first."""
        if element not in {el.symbol for el in structure.composition.elements}:
            raise AppInputError(f"{element!r} is not in the structure; choose one of its elements")
        try:
            result = self.infiller(
                structure, mask_element=element, num_candidates=top_k, return_structures=True
            )
        except ValueError as err:
            raise AppInputError(str(err)) from None
        return result["candidates"]

    @property
    def hull(self):
        if self._hull is None:
            from hf_crystal.evaluation.stability import shipped_hull

            self._hull = shipped_hull()
        return self._hull

    def stability(self, crystals: Sequence[Crystal]) -> list[Crystal]:
        """Relax the crystals' shown structures with CHGNet and set their E_hull against the shipped hull
        (`e_hull`; `stability_note` says why a crystal has none). Returns the crystals."""
        from hf_crystal.evaluation.stability import HullError, corrected_entries

        if self._relaxer is None:
            from hf_crystal.evaluation.relax import BatchedRelaxer

            self._relaxer = BatchedRelaxer()
        todo = [c for c in crystals if c.shown is not None]
        results = self._relaxer.relax([c.shown for c in todo], desc="relax (CHGNet)")
        entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
        for crystal, result, entry in zip(todo, results, entries, strict=True):
            crystal.e_hull, crystal.stability_note = None, None
            if result.error or entry is None:
                crystal.stability_note = (
                    f"relaxation failed: {result.error}" if result.error else "MP2020 rejected"
                )
                continue
            try:
                crystal.e_hull = self.hull.e_above_hull(entry)
            except HullError as err:
                crystal.stability_note = str(err)
                continue
            elements = [el.symbol for el in crystal.shown.composition.elements]
            if not self.hull.covers(elements):
                crystal.stability_note = (
                    "no compound of this chemical system in the hull: elemental references only"
                )
            elif not result.converged:
                crystal.stability_note = f"relaxation not converged in {result.steps} steps"
        for crystal in crystals:
            if crystal.shown is None:
                crystal.stability_note = "no structure"
        return crystals


# Presentation: tables, gallery items and files.


def summary_table(crystals: Sequence[Crystal], *, refined: bool) -> pd.DataFrame:
    """One row per crystal: formula, atoms, space group as written (and refined), validity, E_hull."""
    rows = []
    for c in crystals:
        row = {
            "#": c.index,
            "formula": c.formula,
            "atoms": len(c.shown) if c.shown is not None else 0,
            "space group (LLM)": _spacegroup(c.structure),
            "valid (LLM)": "yes" if c.valid else "no",
        }
        if refined:
            row["space group (refined)"] = _spacegroup(c.refined)
            row["valid (refined)"] = "yes" if c.refined_valid else "no"
        row["E_hull (eV/atom)"] = "" if c.e_hull is None else f"{c.e_hull:.3f}"
        row["note"] = c.stability_note or c.error or ""
        rows.append(row)
    return pd.DataFrame(rows)


def gallery_items(crystals: Sequence[Crystal], *, refined: bool, written: str = "as written") -> list[dict]:
    """The `crystal_gallery` value: per crystal a title, info lines, a P1 CIF for the 3D view and the
    symmetrized CIF to download. `written` qualifies the space group of `Crystal.structure` ("" for a structure
    the model did not write, e.g. a substituted one)."""
    items = []
    for c in crystals:
        lines = [c.label] if c.label else []
        if c.shown is None:
            items.append({"title": f"#{c.index} (not parsed)", "lines": [*lines, c.error or ""], "cif": ""})
            continue
        group = f"space group {written}".strip()
        lines.append(f"{group}: {_spacegroup(c.structure)}, {'valid' if c.valid else 'not valid'}")
        if refined and c.refined is not None:
            lines.append(f"refined: {_spacegroup(c.refined)}, {'valid' if c.refined_valid else 'not valid'}")
        if c.e_hull is not None:
            lines.append(f"E_hull {c.e_hull:.3f} eV/atom (CHGNet, shipped hull)")
        elif c.stability_note:
            lines.append(c.stability_note)
        items.append(
            {
                "title": f"#{c.index} {c.formula}",
                "lines": lines,
                "cif": str(CifWriter(c.shown)),
                "download": c.cif,
                "filename": _cif_name(c),
            }
        )
    return items


def _cif_name(crystal: Crystal) -> str:
    return f"crystal-{crystal.index:02d}-{crystal.formula}.cif"


def write_cifs(crystals: Sequence[Crystal], folder: Path) -> list[str]:
    """Symmetrized CIF of every crystal with a structure into `folder`, and all of them in `crystals.zip`;
    returns the CIF paths, then the zip (as strings, as Gradio takes files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in crystals:
        if c.shown is not None:
            path = folder / _cif_name(c)
            path.write_text(c.cif)
            paths.append(path)
    archive = folder / "crystals.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in paths:
            zf.write(path, path.name)
    return [str(p) for p in (*paths, archive)]


_GALLERY_TEMPLATE = """
<div class="crystal-gallery">
{{#each value}}
  <div class="crystal-card">
    {{#if this.cif}}<div class="crystal-viewer" data-index="{{@index}}"></div>{{/if}}
    <div class="crystal-title">{{this.title}}</div>
    {{#each this.lines}}<div class="crystal-line">{{this}}</div>{{/each}}
    {{#if this.download}}<button class="crystal-download" data-index="{{@index}}">Download CIF</button>{{/if}}
  </div>
{{/each}}
</div>"""
_GALLERY_CSS = """
.crystal-gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }
.crystal-card { border: 1px solid #d0d7de; border-radius: 8px; padding: 8px; background: #fff; color: #1f2328; }
.crystal-viewer { position: relative; width: 100%; height: 240px; }
.crystal-title { font-weight: 600; margin-top: 6px; }
.crystal-line { font-size: 0.9em; }
.crystal-download { margin-top: 6px; padding: 2px 10px; border: 1px solid #8c959f; border-radius: 6px; cursor: pointer; }
"""
# One 3Dmol viewer per card, reused while its card and canvas stay (a re-render of the template drops the canvas
# 3Dmol added); a dropped viewer's WebGL context is released (browsers keep about 16). The download button writes the symmetrized CIF from the value: no server round trip.
_GALLERY_JS = """
const viewers = new Map();
const release = (viewer) => {
  const canvas = viewer.getCanvas();
  const context = canvas.getContext('webgl2') || canvas.getContext('webgl');
  const lose = context && context.getExtension('WEBGL_lose_context');
  if (lose) lose.loseContext();
};
const draw = () => {
  const items = props.value || [];
  const seen = new Set();
  element.querySelectorAll('.crystal-viewer').forEach((div) => {
    const item = items[Number(div.dataset.index)];
    if (!item || !item.cif) return;
    seen.add(div);
    let viewer = viewers.get(div);
    if (viewer && !div.contains(viewer.getCanvas())) {  // the template's re-render dropped the canvas
      release(viewer);
      viewer = undefined;
    }
    if (!viewer) {
      viewer = $3Dmol.createViewer(div, { backgroundColor: 'white', antialias: true });
      viewers.set(div, viewer);
    }
    viewer.clear();
    const model = viewer.addModel(item.cif, 'cif');
    viewer.setStyle({}, { sphere: { scale: 0.35, colorscheme: 'Jmol' } });
    viewer.addUnitCell(model, { box: { color: 'black' } });
    viewer.zoomTo();
    viewer.render();
  });
  for (const [div, viewer] of viewers) {
    if (!seen.has(div)) {
      release(viewer);
      viewers.delete(div);
    }
  }
};
element.addEventListener('click', (event) => {
  const button = event.target.closest('.crystal-download');
  if (!button) return;
  const item = (props.value || [])[Number(button.dataset.index)];
  const url = URL.createObjectURL(new Blob([item.download], { type: 'chemical/x-cif' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = item.filename;
  link.click();
  URL.revokeObjectURL(url);
});
draw();
watch('value', draw);
"""


def crystal_gallery(**kwargs) -> gr.HTML:
    """Cards of crystals, each with an interactive 3D view of the cell (3Dmol.js), info lines and a CIF download.

    A `gr.HTML` whose value is a list of dicts (`gallery_items`): title, lines, cif (P1, drawn), download (the
    symmetrized CIF) and filename. 3Dmol.js comes from the app's own server. (A function, not a `gr.HTML`
    subclass: Gradio writes a .pyi stub beside the module of every component class.)
    """
    return gr.HTML(
        value=[],
        html_template=_GALLERY_TEMPLATE,
        css_template=_GALLERY_CSS,
        js_on_load=_GALLERY_JS,
        head=f'<script src="gradio_api/file={VIEWER_JS}"></script>',
        **kwargs,
    )


# The Blocks.


def build_app(
    model: str | CrystalApp | None = None,
    *,
    refiner: str | None = "auto",
    max_crystals: int = DEFAULT_MAX_CRYSTALS,
    max_sites: int = DEFAULT_MAX_SITES,
) -> gr.Blocks:
    """The app: a Generate tab (conditions, gallery of 3D views, CIFs, stability button) and an Infill tab.

    Args:
        model (`str` or `CrystalApp`): Folder or Hub id of a model or adapter, or a `CrystalApp` (default: the
            embedded default model with its refiner, offline).
        refiner (`str` or None): See `CrystalApp`; ignored when `model` is a `CrystalApp`.
        max_crystals (`int`): The most crystals one request may ask for (at most `MAX_CRYSTALS_LIMIT`).
        max_sites (`int`): The most sites a generated crystal may have.
    """
    if not 1 <= max_crystals <= MAX_CRYSTALS_LIMIT:
        raise ValueError(
            f"max_crystals must be 1-{MAX_CRYSTALS_LIMIT} (one WebGL context per 3D view), got {max_crystals}"
        )
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at call time, besides Blocks' own flag
    gr.set_static_paths([STATIC_DIR])
    app = (
        model
        if isinstance(model, CrystalApp)
        else CrystalApp(model or DEFAULT_MODEL, refiner=refiner, max_sites=max_sites)
    )
    outputs = Path(tempfile.mkdtemp(prefix="hf-crystal-app-"))
    has_refiner = app.refining is not None

    def on_generate(
        formula, formula_units, spacegroup, e_above_hull, band_gap, num, temperature, refine, seed
    ):
        try:
            conditions = read_conditions(
                formula, formula_units, spacegroup, e_above_hull, band_gap, max_sites=app.max_sites
            )
            num = _whole(num, "number of crystals")  # the sliders' bounds are checked by Gradio: the cap
            seed = None if _number(seed, "seed") is None else _whole(seed, "seed")
            start = time.perf_counter()
            crystals = app.generate(conditions, num, temperature=temperature, refine=refine, seed=seed)
        except AppInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        refined = refine and has_refiner
        seconds = time.perf_counter() - start
        status = _generation_status(crystals, conditions, refined, seconds)
        files = write_cifs(crystals, Path(tempfile.mkdtemp(dir=outputs)))
        return (
            status,
            summary_table(crystals, refined=refined),
            gallery_items(crystals, refined=refined),
            files,
            (crystals, refined),
        )

    def on_stability(state, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        if not state or not state[0]:
            raise gr.Error("generate crystals first, then check their stability", print_exception=False)
        crystals, refined = state
        start = time.perf_counter()
        app.stability(crystals)
        done = sum(c.e_hull is not None for c in crystals)
        status = (
            f"Relaxed {sum(c.shown is not None for c in crystals)} crystals with CHGNet in "
            f"{time.perf_counter() - start:.1f} s; E_hull of {done} against the {app.hull.description} "
            f"({app.hull.n_entries} entries; a CHGNet hull, a proxy for the DFT one)."
        )
        return (
            status,
            summary_table(crystals, refined=refined),
            gallery_items(crystals, refined=refined),
            state,
        )

    def on_structure(path):
        if path is None:
            return gr.update(choices=[], value=None)
        try:
            structure = read_structure(path)
        except AppInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        symbols = [el.symbol for el in structure.composition.elements]
        return gr.update(choices=symbols, value=symbols[0])

    def on_infill(path, element, top_k):
        try:
            structure = read_structure(path)
            if not element:
                raise AppInputError("choose the element to mask")
            top_k = _whole(top_k, "number of candidates")
            candidates = app.infill(structure, element, top_k=top_k)
        except AppInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        crystals = [
            Crystal(
                i,
                c["structure"],
                valid=_valid(c["structure"]),
                label=f"{element} → {c['element']}, p = {c['probability']:.3f}",
            )
            for i, c in enumerate(candidates, start=1)
        ]
        table = pd.DataFrame(
            [
                {
                    "rank": i,
                    "element": c["element"],
                    "probability": round(c["probability"], 4),
                    "formula": s.formula,
                }
                for i, (c, s) in enumerate(zip(candidates, crystals, strict=True), start=1)
            ]
        )
        status = (
            f"{structure.composition.reduced_formula} with {element} masked: the model's {len(candidates)} likeliest "
            f"replacements (probabilities normalised over the candidate elements); the structures keep the "
            "positions, only the element changes."
        )
        shown = crystals[: min(4, len(crystals))]
        files = write_cifs(crystals, Path(tempfile.mkdtemp(dir=outputs)))
        return status, table, gallery_items(shown, refined=False, written=""), files

    with gr.Blocks(title="hf-crystal", analytics_enabled=False) as demo:
        gr.Markdown(
            "# hf-crystal\nCrystals written by a language model "
            f"(`{app.model_name}`{f', refined by `{app.refiner_name}`' if has_refiner else ''}), "
            "shown in 3D, as CIF files. Requests are queued and run one at a time."
        )
        with gr.Tab("Generate"):
            with gr.Row():
                formula = gr.Textbox(
                    label="formula", placeholder="e.g. SrTiO3 (empty: any)", elem_id="formula"
                )
                formula_units = gr.Dropdown(
                    ["any", "cell", "1", "2", "3", "4", "6", "8"],
                    value="any",
                    allow_custom_value=True,
                    label="formula units per cell",
                    info='"any": drawn from MP-20; "cell": counts as written',
                    elem_id="formula-units",
                )
                # Text, not gr.Number: a Number shows 0 when empty, and "any" needs an empty field.
                spacegroup = gr.Textbox(
                    label="space group", placeholder="1-230 (empty: any)", elem_id="spacegroup"
                )
                e_above_hull = gr.Textbox(
                    label="E_hull (eV/atom)", placeholder="empty: any", elem_id="e-hull"
                )
                band_gap = gr.Textbox(label="band gap (eV)", placeholder="empty: any", elem_id="band-gap")
            with gr.Row():
                num = gr.Slider(
                    1, max_crystals, value=min(4, max_crystals), step=1, label="crystals", elem_id="num"
                )
                temperature = gr.Slider(
                    0, MAX_TEMPERATURE, value=0.9, step=0.05, label="temperature (0: greedy)"
                )
                seed = gr.Textbox(label="seed", placeholder="empty: random", elem_id="seed")
                refine = gr.Checkbox(
                    value=has_refiner,
                    interactive=has_refiner,
                    label="FlowLLM refiner" if has_refiner else "refiner (this model has none)",
                    elem_id="refine",
                )
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stability = gr.Button("Stability (CHGNet relaxation, E_hull)", elem_id="stability")
            status = gr.Markdown(elem_id="status")
            table = gr.Dataframe(label="summary", interactive=False, elem_id="summary", wrap=True)
            gallery = crystal_gallery(elem_id="gallery")
            files = gr.File(
                label="CIF files (symmetrized, symprec 0.1 Å) and all as a zip",
                file_count="multiple",
                elem_id="files",
            )
            state = gr.State(None)
        with gr.Tab("Infill"):
            with gr.Row():
                cif = gr.File(label="CIF file", file_types=[".cif"], type="filepath", elem_id="cif")
                with gr.Column():
                    element = gr.Dropdown(
                        [], label="element to mask", allow_custom_value=True, elem_id="element"
                    )
                    top_k = gr.Slider(1, 20, value=10, step=1, label="candidates")
                    infill = gr.Button("Rank replacements", variant="primary", elem_id="infill")
            gr.Examples(sorted(str(p) for p in EXAMPLES_DIR.glob("*.cif")), inputs=cif, label="examples")
            infill_status = gr.Markdown(elem_id="infill-status")
            infill_table = gr.Dataframe(label="candidates", interactive=False, elem_id="candidates")
            infill_gallery = crystal_gallery(elem_id="infill-gallery")
            infill_files = gr.File(
                label="substituted structures (CIF) and all as a zip", file_count="multiple"
            )

        generate.click(
            on_generate,
            [formula, formula_units, spacegroup, e_above_hull, band_gap, num, temperature, refine, seed],
            [status, table, gallery, files, state],
            api_name="generate",
            concurrency_id=_MODEL_QUEUE,
        )
        stability.click(
            on_stability,
            state,
            [status, table, gallery, state],
            api_name="stability",
            concurrency_id=_MODEL_QUEUE,
        )
        cif.change(on_structure, cif, element, api_name=False)
        infill.click(
            on_infill,
            [cif, element, top_k],
            [infill_status, infill_table, infill_gallery, infill_files],
            api_name="infill",
            concurrency_id=_MODEL_QUEUE,
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def _whole(value: str | float | None, what: str) -> int:
    number = _number(value, what)
    if number is None or not number.is_integer():
        raise AppInputError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _valid(structure: Structure | None) -> bool:
    from hf_crystal.evaluation.validity import validity_flags

    return structure is not None and validity_flags(structure)["valid"]


def _generation_status(crystals: Sequence[Crystal], conditions: dict, refined: bool, seconds: float) -> str:
    names = {"formula_units": "formula units", "spacegroup": "space group", "e_above_hull": "E_hull"}
    asked = (
        ", ".join(f"{names.get(k, k.replace('_', ' '))} {v}" for k, v in conditions.items())
        or "no conditions"
    )
    parsed = [c for c in crystals if c.structure is not None]
    valid = sum(c.valid for c in crystals)
    text = f"{len(crystals)} crystal{'s' if len(crystals) != 1 else ''} ({asked}) in {seconds:.1f} s: {valid} valid as the LLM wrote them"
    if refined:
        text += f", {sum(bool(c.refined_valid) for c in crystals)} after the refiner"
    if len(parsed) < len(crystals):
        text += f"; {len(crystals) - len(parsed)} did not parse (shown without a structure)"
    if conditions.get("formula"):
        target = Composition(conditions["formula"]).reduced_formula
        hits = sum(c.shown is not None and c.formula == target for c in crystals)
        text += f"; {hits} with formula {target}"
    return text + "."
