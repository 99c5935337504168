"""The Gradio app (hf_crystal.app): its model calls, over real HTTP with gradio_client, and in headless Chromium.

The fast tests run a tiny random model built here; the slow one runs the embedded default model with its refiner.
The served tests need the loopback-only network namespace (`make test`: scripts/loopback-only), where the app
and the browser can reach nothing but 127.0.0.1; the browser test fails, not skips, when WebGL cannot start.
"""

import io
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from factories import rocksalt
from pymatgen.core import Lattice, Structure

gr = pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

from hf_crystal.app import (  # noqa: E402  (after the skip)
    DEFAULT_MAX_CRYSTALS,
    EXAMPLES_DIR,
    AppInputError,
    CrystalApp,
    build_app,
    gallery_items,
    read_conditions,
    read_structure,
    summary_table,
    symmetrized_cif,
    write_cifs,
)
from hf_crystal.testing import save_tiny_llama  # noqa: E402

#: The status line's text in the page (its Markdown, without Gradio's "processing" overlay).
STATUS = "(document.querySelector('#status [data-testid=markdown]')?.innerText ?? '')"
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",  # WebGL without a GPU (Chrome >= 139 needs both flags)
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--no-first-run",
    "--no-sandbox",  # root in CI
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def crystal_app(tmp_path_factory):
    """A `CrystalApp` over a tiny random model (no refiner)."""
    return CrystalApp(str(save_tiny_llama(tmp_path_factory.mktemp("tiny"))), refiner=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(demo) -> str:
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def served(crystal_app, loopback_only):
    demo = build_app(crystal_app)
    url = _serve(demo)
    yield url
    demo.close()


# Inputs and outputs, without a server.


@pytest.mark.parametrize(
    "fields, expected",
    [
        (("SrTiO3", "any", "", "", ""), {"formula": "SrTiO3", "formula_units": "any"}),
        (("LiFePO4", "2", None, None, None), {"formula": "LiFePO4", "formula_units": 2}),
        (("", "any", "225", "0.05", "1.5"), {"spacegroup": 225, "e_above_hull": 0.05, "band_gap": 1.5}),
        (("", "any", 62.0, 0, None), {"spacegroup": 62, "e_above_hull": 0.0}),
    ],
)
def test_read_conditions(fields, expected):
    assert read_conditions(*fields) == expected


@pytest.mark.parametrize(
    "fields, message",
    [
        (("Xy2", "any", "", "", ""), "has symbols that are not elements"),
        (("NaCl0.5", "any", "", "", ""), "fractional amounts"),
        (("Na(Cl", "any", "", "", ""), "cannot read formula"),
        (("LiFePO4", "3", "", "", ""), "21 atoms, more than max_sites=20"),  # impossible formula units
        (("Li10Fe10P10O40", "cell", "", "", ""), "Li10Fe10P10O40 has 70 atoms, more than max_sites=20"),
        (("NaCl", "two", "", "", ""), 'formula units must be "any", "cell" or a whole number'),
        (("", "any", "0", "", ""), "space group must be a whole number from 1 to 230, got 0"),
        (("", "any", "231", "", ""), "from 1 to 230, got 231"),
        (("", "any", "2.5", "", ""), "from 1 to 230, got 2.5"),
        (("", "any", "Fm-3m", "", ""), "space group must be a number, got 'Fm-3m'"),
        (("", "any", "", "-0.1", ""), "E_hull must be >= 0"),
        (("", "any", "", "", "nan"), "band gap must be a finite number"),
    ],
)
def test_read_conditions_refuses_bad_input_with_a_message(fields, message):
    with pytest.raises(AppInputError, match=message.replace("(", r"\(")):
        read_conditions(*fields)


def test_read_structure(tmp_path):
    assert read_structure(EXAMPLES_DIR / "SrTiO3.cif").composition.reduced_formula == "SrTiO3"
    (tmp_path / "garbage.cif").write_text("this is not a CIF\n_cell_length_a oops\n")
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "notes.txt").write_text("hello")
    disordered = Structure(Lattice.cubic(4), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    disordered.to(filename=str(tmp_path / "alloy.cif"))
    for name, message in [
        ("garbage.cif", "could not read a crystal structure from garbage.cif"),
        ("empty.cif", "could not read a crystal structure from empty.cif"),
        ("notes.txt", "notes.txt is not a CIF file"),
        ("alloy.cif", "partially occupied sites"),
    ]:
        with pytest.raises(AppInputError, match=message):
            read_structure(tmp_path / name)
    with pytest.raises(AppInputError, match="upload a CIF file or pick an example"):
        read_structure(None)


def test_symmetrized_cif_keeps_the_composition_and_finds_the_group():
    primitive = rocksalt().get_primitive_structure()
    text = symmetrized_cif(primitive)
    assert "Fm-3m" in text
    back = Structure.from_str(text, fmt="cif")
    assert back.composition.reduced_formula == "NaCl" and back.get_space_group_info(symprec=0.1)[1] == 225


def test_generate_writes_cifs_of_the_formula(crystal_app, tmp_path):
    crystals = crystal_app.generate({"formula": "NaCl"}, 2, seed=0)
    assert [c.index for c in crystals] == [1, 2]
    assert all(c.structure is not None and c.formula == "NaCl" for c in crystals)  # constrained decoding
    assert all(c.refined is None for c in crystals)  # no refiner
    paths = write_cifs(crystals, tmp_path)
    assert [Path(p).name for p in paths] == ["crystal-01-NaCl.cif", "crystal-02-NaCl.cif", "crystals.zip"]
    for path in paths[:2]:
        assert Structure.from_file(path).composition.reduced_formula == "NaCl"
    with zipfile.ZipFile(paths[2]) as zf:
        assert zf.namelist() == [Path(p).name for p in paths[:2]]
    table = summary_table(crystals, refined=False)
    assert list(table["formula"]) == ["NaCl"] * 2 and "space group (refined)" not in table
    items = gallery_items(crystals, refined=False)
    assert all(item["cif"] and item["download"] and item["filename"].endswith(".cif") for item in items)


def test_generate_refuses_what_the_model_cannot_write(crystal_app):
    with pytest.raises(AppInputError, match="composition has 45 atoms, more than max_sites=20"):
        crystal_app.generate({"formula": "Li30O15", "formula_units": "cell"}, 1)


def test_infill_ranks_candidates(crystal_app):
    structure = read_structure(EXAMPLES_DIR / "SrTiO3.cif")
    candidates = crystal_app.infill(structure, "Sr", top_k=5)
    probabilities = [c["probability"] for c in candidates]
    assert len(candidates) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6 and "Sr" not in [c["element"] for c in candidates]
    for c in candidates:  # the substituted structure: same sites, Sr replaced by the candidate
        expected = [c["element"] if site.specie.symbol == "Sr" else site.specie.symbol for site in structure]
        assert [site.specie.symbol for site in c["structure"]] == expected
        assert np.allclose(c["structure"].frac_coords, structure.frac_coords)
    with pytest.raises(AppInputError, match="'Na' is not in the structure"):
        crystal_app.infill(structure, "Na")


def test_build_app_caps_crystals_per_request(crystal_app):
    with pytest.raises(ValueError, match="max_crystals must be 1-12"):
        build_app(crystal_app, max_crystals=13)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-crystals", "13"], "--max-crystals must be 1-12, got 13"),
        (["--refiner", "x", "--no-refiner"], "give --refiner or --no-refiner, not both"),
        (["--max-sites", "0"], "--max-sites must be >= 1, got 0"),
    ],
)
def test_app_command_refuses_bad_options(argv, message, capsys):
    from hf_crystal.commands import main

    assert main(["app", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"hf-crystal: error: {message}"


# Over HTTP, with gradio_client.


def _generate(client, formula, num=4, spacegroup="", formula_units="any"):
    return client.predict(
        formula, formula_units, spacegroup, "", "", num, 0.9, False, "0", api_name="/generate"
    )


def test_client_gets_four_cifs_with_the_formula(served):
    from gradio_client import Client

    client = Client(served, verbose=False)
    status, table, gallery, files = _generate(client, "SrTiO3")
    assert status.startswith("4 crystals") and "4 with formula SrTiO3" in status
    assert [row[1] for row in table["data"]] == ["SrTiO3"] * 4
    cifs = [f for f in files if f.endswith(".cif")]
    assert len(cifs) == 4 and len(gallery) == 4
    for path in cifs:
        assert Structure.from_file(path).composition.reduced_formula == "SrTiO3"
    with zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))) as zf:
        assert len(zf.namelist()) == 4


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"formula": "Xy2"}, "formula 'Xy2' has symbols that are not elements"),
        ({"formula": "LiFePO4", "formula_units": "4"}, "more than max_sites=20"),
        ({"formula": "", "spacegroup": "231"}, "space group must be a whole number from 1 to 230"),
        (  # the cap, checked by Gradio's slider
            {"formula": "NaCl", "num": DEFAULT_MAX_CRYSTALS + 1},
            f"Value {DEFAULT_MAX_CRYSTALS + 1} is greater than maximum value {DEFAULT_MAX_CRYSTALS}",
        ),
    ],
)
def test_client_gets_a_message_for_bad_input(served, request_, message):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _generate(Client(served, verbose=False), **request_)


def test_client_infill_and_an_unreadable_cif(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    status, table, gallery, files = client.predict(
        handle_file(str(EXAMPLES_DIR / "NaCl.cif")), "Cl", 5, api_name="/infill"
    )
    assert "NaCl with Cl masked" in status and len(table["data"]) == 5 and len(gallery) == 4
    assert [Structure.from_file(f).composition.reduced_formula for f in files if f.endswith(".cif")] == [
        row[3] for row in table["data"]
    ]
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 4\nloop_\n_atom_site_label\n")
    with pytest.raises(AppError, match="could not read a crystal structure from broken.cif"):
        client.predict(handle_file(str(tmp_path / "broken.cif")), "Na", 5, api_name="/infill")


def test_model_calls_run_one_at_a_time(served, crystal_app, monkeypatch):
    """Two users' requests at once: Gradio's queue runs the second model call after the first has finished."""
    from gradio_client import Client, handle_file

    calls = []
    for name in ("generate", "infill"):
        method = getattr(crystal_app, name)

        def timed(*args, method=method, name=name, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter(), name))

        monkeypatch.setattr(crystal_app, name, timed)
    first = Client(served, verbose=False).submit(
        "NaCl", "any", "", "", "", 1, 0.9, False, "0", api_name="/generate"
    )
    second = Client(served, verbose=False).submit(
        handle_file(str(EXAMPLES_DIR / "NaCl.cif")), "Na", 3, api_name="/infill"
    )
    first.result(), second.result()
    (start_a, end_a, _), (start_b, end_b, _) = sorted(calls)
    assert {name for *_, name in calls} == {"generate", "infill"} and end_a <= start_b


def test_client_stability_needs_crystals_first(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="generate crystals first"):
        Client(served, verbose=False).predict(api_name="/stability")


@pytest.mark.slow
def test_stability_button_relaxes_and_adds_e_hull(crystal_app, served):
    """CHGNet relaxation and E_hull against the shipped hull: compounds of MP-20 sit on it (within CHGNet's
    noise), a crystal without a structure says so; the button does the same for the generated crystals."""
    from gradio_client import Client

    from hf_crystal.app import Crystal

    crystals = [Crystal(1, read_structure(EXAMPLES_DIR / name)) for name in ("NaCl.cif", "SrTiO3.cif")]
    crystals.append(Crystal(3, None))
    crystal_app.stability(crystals)
    assert all(abs(c.e_hull) < 0.05 and c.stability_note is None for c in crystals[:2])
    assert crystals[2].e_hull is None and crystals[2].stability_note == "no structure"
    client = Client(served, verbose=False)
    _generate(client, "NaCl", num=2)
    status, table, gallery, *_ = client.predict(api_name="/stability")
    assert "shipped hull" in status and "E_hull (eV/atom)" in table["headers"]
    column = table["headers"].index("E_hull (eV/atom)")
    note = table["headers"].index("note")
    assert all(row[column] != "" or row[note] for row in table["data"])  # an E_hull, or why there is none


# In headless Chromium.


def _browser(playwright):
    path = shutil.which("chromium")
    assert path, "the browser test needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


def _variance(png: bytes, box: dict) -> float:
    """Pixel variance (grey levels) of the `box` (CSS pixels, from `bounding_box`) of a page screenshot."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    crop = image.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    return float(np.asarray(crop, dtype=float).var())


def _generate_in_browser(page, formula: str, num: int, timeout: float = 60) -> float:
    """Ask the open app for `num` crystals of `formula`, wait until the table has their rows and every 3D view its
    canvas; returns the seconds from the click to the results."""
    page.wait_for_selector("#generate")
    webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl')")
    assert webgl, (
        "WebGL did not start in headless Chromium (needs --use-angle=swiftshader --enable-unsafe-swiftshader)"
    )
    page.locator("#formula textarea").fill(formula)
    page.locator("#num input[type=number]").fill(str(num))
    page.locator("#num input[type=number]").press("Enter")
    page.evaluate(f"() => {{ window.oldStatus = {STATUS}; }}")
    start = time.perf_counter()
    page.click("#generate")
    page.wait_for_function(  # new results: a new status line, then the table's rows and the views' canvases
        f"""() => /crystal/.test({STATUS})
            && {STATUS} !== window.oldStatus
            && document.querySelectorAll('#gallery .crystal-card').length === {num}
            && document.querySelectorAll('#gallery .crystal-viewer canvas').length === {num}
            && document.querySelectorAll('#summary [role=row][data-index]').length === {num}""",
        timeout=timeout * 1000,
    )
    seconds = time.perf_counter() - start
    page.wait_for_timeout(300)  # the views' first frame
    return seconds


def _check_results(page, formula: str, num: int, screenshot: Path) -> None:
    """The summary table has a row per crystal, and the first 3D view holds a drawing: its pixels vary more than
    those of a blank 3Dmol canvas of the same size drawn in the same page (one screenshot holds both)."""
    rows = page.locator("#summary [role=row][data-index]")  # Gradio's data grid: one div per row
    assert rows.count() == num and all(formula in text for text in rows.all_inner_texts())
    viewer = page.locator("#gallery .crystal-viewer").first
    box = viewer.bounding_box()
    page.evaluate(
        """([w, h]) => {
        const div = document.createElement('div');
        div.id = 'blank-viewer';
        div.style.cssText = `position: fixed; left: 0; top: 0; width: ${w}px; height: ${h}px; z-index: 9999`;
        document.body.appendChild(div);
        $3Dmol.createViewer(div, { backgroundColor: 'white' }).render();
    }""",
        [box["width"], box["height"]],
    )
    page.wait_for_timeout(200)
    box = viewer.bounding_box()
    png = page.screenshot(path=screenshot)
    blank = _variance(png, page.locator("#blank-viewer").bounding_box())
    drawn = _variance(png, box)
    page.evaluate("() => document.getElementById('blank-viewer').remove()")
    assert drawn > blank + 20, (
        f"the 3D view looks blank: pixel variance {drawn:.1f}, blank canvas {blank:.1f}"
    )


def test_browser_generates_and_draws(served, tmp_path):
    from playwright.sync_api import sync_playwright

    requests = []
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(served)
            _generate_in_browser(page, "SrTiO3", 1)  # waits for the table's row and the view's canvas
            _generate_in_browser(page, "NaCl", 2)  # new results: the gallery is redrawn
            _check_results(page, "NaCl", 2, tmp_path / "generate.png")
            page.locator("#formula textarea").fill("Xy2")  # a bad formula: a message, no traceback
            page.click("#generate")
            toast = page.locator(".toast-body.error")
            toast.wait_for(timeout=30_000)
            assert "formula 'Xy2' has symbols that are not elements" in toast.inner_text()
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    hosts = {url.split("/")[2] for url in requests if url.startswith("http")}
    assert hosts == {served.split("/")[2]}, f"the page contacted other hosts: {hosts}"


@pytest.mark.slow
def test_default_model_in_the_browser(loopback_only, tmp_path):
    """The embedded default model with its refiner: four SrTiO3 crystals, refined, drawn in 3D."""
    from playwright.sync_api import sync_playwright

    demo = build_app()
    url = _serve(demo)
    try:
        with sync_playwright() as playwright:
            browser = _browser(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            seconds = _generate_in_browser(page, "SrTiO3", 4, timeout=600)
            _check_results(page, "SrTiO3", 4, tmp_path / "default.png")
            assert "space group (refined)" in page.locator("#summary").inner_text()
            browser.close()
    finally:
        demo.close()
    print(f"default model: 4 crystals from click to results in {seconds:.1f} s")


# The Space.

ROOT = Path(__file__).resolve().parents[1]


def test_space_folder_is_a_gradio_space_of_the_pinned_version():
    import ast
    import tomllib

    from huggingface_hub import metadata_load

    meta = metadata_load(ROOT / "space" / "README.md")
    assert meta["sdk"] == "gradio" and (ROOT / "space" / meta["app_file"]).is_file()
    pin = next(
        r
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
            "app"
        ]
    )
    assert pin.startswith("gradio==") and meta["sdk_version"].startswith(
        pin.removeprefix("gradio==").rstrip("*")
    )
    assert gr.__version__ == meta["sdk_version"]  # the tests ran the version the Space runs
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    tree = ast.parse((ROOT / "space" / "app.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [
        ("hf_crystal.app", ["build_app"])
    ]
    assert "hf-crystal" in (ROOT / "space" / "requirements.txt").read_text().replace(
        "hf_crystal", "hf-crystal"
    )


def test_push_space_folder(hub_server, tmp_path, capsys):
    from huggingface_hub import HfApi

    from hf_crystal.commands import main
    from hf_crystal.hub import pull

    folder = tmp_path / "space"
    folder.mkdir()
    for name in ("README.md", "app.py", "requirements.txt"):  # not a locally built wheel
        (folder / name).write_bytes((ROOT / "space" / name).read_bytes())
    repo_id = hub_server.repo_id("space")
    assert main(["push", str(folder), repo_id, "--repo-type", "model"]) == 2
    assert "is a space folder: push it as repo type 'space'" in capsys.readouterr().err
    assert main(["push", str(folder), repo_id, "--repo-type", "space"]) == 0
    assert "pushed space folder" in capsys.readouterr().out
    info = HfApi().space_info(repo_id)
    assert info.sdk == "gradio"
    local = pull(repo_id, repo_type="space")
    for name in ("README.md", "app.py", "requirements.txt"):
        assert (local / name).read_bytes() == (folder / name).read_bytes()
    (folder / "README.md").write_text("# no YAML header\n")
    assert main(["push", str(folder), repo_id]) == 2
    assert "names no sdk in its YAML header" in capsys.readouterr().err


def test_vendored_viewer_is_the_recorded_3dmol_build():
    import hashlib
    import re

    from hf_crystal.app import VIEWER_JS

    record = (VIEWER_JS.parent / "README.md").read_text()
    digest = re.search(r"sha256 ([0-9a-f]{64})  3Dmol-min.js", record).group(1)
    assert hashlib.sha256(VIEWER_JS.read_bytes()).hexdigest() == digest
    assert "BSD-3-Clause" in record and (VIEWER_JS.parent / "LICENSE").is_file()
