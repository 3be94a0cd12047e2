"""visualize-clusters --html: the cluster explorer page, opened from file:// in a real headless Chromium.

What the page marks (read from the DOM) must be exactly the indices `--json` prints for the same image,
model and blocks. The browser tests need Debian's chromium and chromium-driver (.ci/run installs them) and
are skipped with a reason where those are absent. The CLI error tests need no browser.

Running this file as a script writes the README's screenshot:
    python tests/viz/test_explorer.py docs/explorer.png
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NO_BROWSER = not (CHROMIUM.is_file() and CHROMEDRIVER.is_file())
needs_browser = pytest.mark.skipif(
    NO_BROWSER, reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                       "`apt-get install -y chromium chromium-driver`, as .ci/run does"
)
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars")
PAINTED = """return arguments[0].map(grid => Array.from(document.querySelectorAll(grid + ' .cell[data-role]')).map(
    e => [Number(e.dataset.row), Number(e.dataset.col), e.dataset.role, Number(e.dataset.slot),
          getComputedStyle(e).backgroundColor]));"""


# ---------------------------------------------------------------- the browser, and a screenshot helper

def start_chrome(width: int = 1280, height: int = 1000):
    """Headless Chromium through Selenium, with the flags that keep it off the network, a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="dccnext-chrome-")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.profile_dir = profile
    return driver


def stop_chrome(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def open_page(driver, path: Path, fragment: str = "") -> None:
    driver.get("about:blank")  # a real load even when only the fragment differs from the current page
    driver.get(path.resolve().as_uri() + fragment)
    assert driver.execute_script("return document.body.dataset.ready") == "yes"


def screenshot(driver, out: Path, max_colors: int = 256) -> Path:
    """The window as a PNG with an adaptive palette (small enough for the README)."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=max_colors, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


# ---------------------------------------------------------------- pages built by the CLI

def invoke(cli_app, *args):
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def b2_page(cli_app, photos, tmp_path_factory):
    """B2, random weights, 224 px, no --blocks: all 12 DCC blocks; --json from the same forward pass."""
    page = tmp_path_factory.mktemp("b2") / "astronaut.html"
    torch.manual_seed(0)
    result = invoke(cli_app, "visualize-clusters", photos["astronaut"], "--variant", "b2", "--res", "224",
                    "--html", page, "--json")
    return page, json.loads(result.stdout)


@pytest.fixture(scope="module")
def b0_page(cli_app, photos, b0_checkpoint, tmp_path_factory):
    """The small trained-looking b0 at 96 px (stage 4 has 3x3 = 9 < K = 18 tokens); --json from a separate run."""
    page = tmp_path_factory.mktemp("b0") / "chelsea.html"
    invoke(cli_app, "visualize-clusters", photos["chelsea"], "--checkpoint", b0_checkpoint, "--res", "96",
           "--html", page)
    result = invoke(cli_app, "visualize-clusters", photos["chelsea"], "--checkpoint", b0_checkpoint, "--res", "96",
                    "--blocks", "all-dcc", "--json")
    return page, json.loads(result.stdout)


@pytest.fixture(scope="module")
def chrome():
    if NO_BROWSER:
        pytest.skip("no chromium/chromedriver")
    driver = start_chrome()
    yield driver
    stop_chrome(driver)


def cell_element(driver, row, col, grid="#grid"):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'{grid} .cell[data-row="{row}"][data-col="{col}"]')


def hover(driver, row, col):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(cell_element(driver, row, col)).perform()


def select_block(driver, block):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "block-select")).select_by_value(str(block))


def painted(driver, grids=("#grid",)):
    """[{(row, col): (role, slot, rgb)}] of the cells each grid (a CSS selector) marks, read in one call."""
    return [
        {(row, col): (role, slot, tuple(int(v) for v in re.findall(r"[\d.]+", color)[:3]))
         for row, col, role, slot, color in cells}
        for cells in driver.execute_script(PAINTED, list(grids))
    ]


def expected(block: dict, center: tuple[int, int]) -> dict:
    """{(row, col): slot} of the cluster of `center`, from --json's index table."""
    cols = block["grid"][1]
    row = block["indices"][center[0] * cols + center[1]]
    return {divmod(int(n), cols): slot for slot, n in enumerate(row)}


def map_cell(cell, src, dst):
    """The cell of grid `dst` that holds the middle of `cell` of grid `src` (rows, cols)."""
    return tuple(min(d - 1, int((c + 0.5) / s * d)) for c, s, d in zip(cell, src, dst, strict=True))


def check_marks(driver, block: dict, center, grid="#grid", cells=None):
    cells = painted(driver, [grid])[0] if cells is None else cells
    want = expected(block, center)
    assert {cell: slot for cell, (_, slot, _) in cells.items()} == want
    assert cells[center][0] == "center" and cells[center][1] == 0
    assert all(role == "member" for cell, (role, _, _) in cells.items() if cell != center)
    red = cells[center][2]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red  # red (over white: no image under a computed colour)
    members = sorted((slot, rgb) for role, slot, rgb in cells.values() if role == "member")
    for _, (r, g, b) in members:
        assert r > 150 and r > g > b, (r, g, b)  # orange
    brightness = [sum(rgb) for _, rgb in members]
    assert brightness == sorted(brightness) and (len(members) < 2 or brightness[0] < brightness[-1])  # nearer darker


# ---------------------------------------------------------------- browser tests

@needs_browser
@pytest.mark.parametrize("which", ["b2", "b0"])
def test_hover_marks_exactly_the_json_indices(chrome, which, request):
    page, data = request.getfixturevalue(f"{which}_page")
    blocks = {b["block"]: b for b in data["images"][0]["blocks"]}
    assert sorted(blocks) == (list(range(7, 19)) if which == "b2" else list(range(7, 14)))
    open_page(chrome, page)
    options = chrome.execute_script("return Array.from(document.querySelectorAll('#block-select option'), "
                                    "o => o.value)")
    assert [int(v) for v in options] == sorted(blocks)
    two = [min(blocks), max(blocks)]  # the first DCC block of stage 3 and the last of stage 4
    for number in two:
        block = blocks[number]
        rows, cols = block["grid"]
        select_block(chrome, number)
        assert chrome.execute_script("return document.getElementById('grid').dataset.block") == str(number)
        assert chrome.find_element("id", "f-k").text.startswith(str(block["cluster_size"]))
        assert chrome.find_element("id", "f-d").text.startswith("8 ")
        for center in ((0, 0), (rows // 2, cols - 2), (rows - 1, cols - 1)):
            hover(chrome, *center)
            check_marks(chrome, block, center)
            info = chrome.find_element("id", "hover-info").text
            assert f"cell ({center[0]}, {center[1]})" in info and "the centre, slot 0" in info
            assert chrome.current_url.endswith(f"#block={number}&cell={center[0]},{center[1]}")
            panels = painted(chrome, [f'figure.panel[data-block="{b}"]' for b in blocks])
            for other, cells in zip(blocks.values(), panels, strict=True):  # the same image point in every block
                check_marks(chrome, other, map_cell(center, block["grid"], other["grid"]), cells=cells)
    assert chrome.get_log("browser") == []  # no script error


@needs_browser
def test_pinned_cluster_shows_slot_and_rank_on_hover(chrome, b0_page):
    page, data = b0_page
    block = next(b for b in data["images"][0]["blocks"] if b["block"] == 12)  # 3x3 grid: K' = 9 of K = 18
    open_page(chrome, page, "#block=12&cell=1,1")
    cell_element(chrome, 1, 1).click()
    assert chrome.execute_script("return document.getElementById('pin').getAttribute('aria-pressed')") == "true"
    want = expected(block, (1, 1))
    far = max(want, key=want.get)
    hover(chrome, *far)
    info = chrome.find_element("id", "hover-info").text
    assert f"slot {want[far]} of the centre's cluster" in info and f"distance rank {want[far]} of 8" in info
    check_marks(chrome, block, (1, 1))  # pinned: hovering does not move the centre
    bars = chrome.execute_script(
        "return Array.from(document.querySelectorAll('#chart rect.bar'), r => [r.dataset.slot, r.dataset.value,"
        " r.classList.contains('current')])")
    assert len(bars) == 18 and [b for b in bars if b[2]] == [[str(want[far]), bars[want[far]][1], True]]
    from dccnext_cli.viz.kernel_weights import kernel_weights
    from dccnext_cli.viz.model_source import load_model

    values = kernel_weights(load_model(data["model"]["checkpoint"]), [12])[0].values
    np.testing.assert_allclose([float(v) for _, v, _ in bars], values, rtol=1e-12)
    hatched = chrome.execute_script("return document.querySelectorAll('#chart rect[fill=\"url(#untrained)\"]').length")
    assert hatched == 18 - 4  # trained at 64 px: stage 4 had 2x2 = 4 tokens
    chrome.find_element("tag name", "body").send_keys("\ue00c")  # Escape unpins
    assert chrome.execute_script("return document.getElementById('pin').getAttribute('aria-pressed')") == "false"


@needs_browser
def test_fragment_keys_and_block_switch(chrome, b2_page):
    from selenium.webdriver.common.keys import Keys

    page, data = b2_page
    blocks = {b["block"]: b for b in data["images"][0]["blocks"]}
    open_page(chrome, page, "#block=9&cell=3,5")  # a shared link restores its view
    assert chrome.find_element("id", "block-select").get_attribute("value") == "9"
    check_marks(chrome, blocks[9], (3, 5))
    body = chrome.find_element("tag name", "body")
    body.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN)
    check_marks(chrome, blocks[9], (4, 7))
    assert chrome.current_url.endswith("#block=9&cell=4,7")
    body.send_keys(Keys.ARROW_UP * 9)  # clamped at the top row
    check_marks(chrome, blocks[9], (0, 7))
    body.send_keys("]")  # next block, same stage: same grid, same cell
    check_marks(chrome, blocks[10], (0, 7))
    select_block(chrome, 16)  # stage 4: the cell holding the same image point
    check_marks(chrome, blocks[16], map_cell((0, 7), (14, 14), (7, 7)))
    assert chrome.current_url.endswith("#block=16&cell=0,3")
    chrome.execute_script("location.hash = '#block=18&cell=6,0'")  # an edited address is followed
    check_marks(chrome, blocks[18], (6, 0))
    assert chrome.find_element("id", "notice").get_attribute("hidden") is not None
    open_page(chrome, page, "#block=3&cell=1,1")  # not a block of the page: say so, show the default
    notice = chrome.find_element("id", "notice")
    assert notice.is_displayed() and "block 3" in notice.text
    assert chrome.execute_script("return document.getElementById('grid').dataset.block") == "7"
    open_page(chrome, page, "#block=16&cell=7,0")
    assert "not a cell of block 16's 7×7 grid" in chrome.find_element("id", "notice").text


@needs_browser
def test_page_requests_nothing_from_the_network(chrome, b2_page, b0_page):
    for page, _ in (b2_page, b0_page):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
        assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text, re.I) and "@import" not in text
        chrome.get_log("performance")  # drop what came before
        open_page(chrome, page)
        hover(chrome, 1, 1)
        chrome.find_element("tag name", "body").send_keys("]")
        urls = [entry["message"]["params"]["request"]["url"]
                for entry in map(lambda e: json.loads(e["message"]), chrome.get_log("performance"))
                if entry["message"]["method"] == "Network.requestWillBeSent"]
        assert any(url.startswith("file://") for url in urls), urls
        assert all(url.split(":", 1)[0] in ("file", "data", "about") for url in urls), urls


@needs_browser
def test_screenshot_is_not_blank(chrome, b2_page, tmp_path):
    page, data = b2_page
    open_page(chrome, page, "#block=7&cell=6,6")
    size = chrome.execute_script("const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight]")
    assert size == [224, 224]
    shot = Image.open(io.BytesIO(chrome.get_screenshot_as_png())).convert("RGB")
    colors = len(set(shot.getdata()))
    assert shot.width >= 1000 and colors > 5000, colors  # a photo, a grid and a chart, not an empty page
    pixels = np.asarray(shot)
    rect = chrome.execute_script("const r = document.querySelector('#grid .cell[data-role=center]')"
                                 ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]")
    x, y = int(rect[0] + rect[2] * 0.2), int(rect[1] + rect[3] * 0.2)  # off the slot label and the border
    red, green, blue = (int(v) for v in pixels[y, x])
    assert red > 150 and green < 100 and blue < 100, (red, green, blue)  # the centre shows red on screen


def test_b2_page_at_224_with_all_blocks_is_small(b2_page):
    page, data = b2_page
    size = page.stat().st_size
    assert size < 1_000_000, size  # well under the 5 MB budget (measured ~230 kB)
    text = page.read_text(encoding="utf-8")
    embedded = json.loads(re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>',
                                    text, re.S).group(1))
    assert [b["block"] for b in embedded["blocks"]] == list(range(7, 19))
    for mine, theirs in zip(embedded["blocks"], data["images"][0]["blocks"], strict=True):
        assert mine["indices"] == theirs["indices"] and mine["grid"] == theirs["grid"]
    assert embedded["image"]["src"].startswith("data:image/png;base64,")


# ---------------------------------------------------------------- CLI errors and outputs (no browser)

def one_error_line(result, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def no_forward(monkeypatch):
    """Any forward pass fails the test: the errors must come before the model runs."""
    from dccnext_cli.models.dccnext import DCCNeXt

    def forward(*_args, **_kwargs):
        raise AssertionError("the model ran before the error was found")

    monkeypatch.setattr(DCCNeXt, "forward", forward)


def test_html_errors_come_before_the_model_runs(run_cli, b0_checkpoint, photos, tmp_path, no_forward):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    existing = tmp_path / "mine.html"
    existing.write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("")
    base = ("visualize-clusters", "--checkpoint", b0_checkpoint)
    for args, message in (
        ((tmp_path / "missing.png", "--html", tmp_path / "p.html"), "does not exist"),
        ((text, "--html", tmp_path / "p.html"), "is not an image file"),
        ((photos["coffee"], "--html", tmp_path / "p.html", "--blocks", "3"), "block 3 is not a DCC block"),
        ((photos["coffee"], "--html", tmp_path / "p.html", "--blocks", "14"), "the DCC blocks are 7-13"),
        ((photos["coffee"], "--html", existing), "--overwrite"),
        ((photos["coffee"], "--html", tmp_path / "p.png"), "the page is a .html file"),
        ((photos["coffee"], "--html", tmp_path), "is a folder"),
        ((photos["coffee"], "--html", a_file / "p.html"), "is a file, not a folder"),
        ((photos["coffee"], photos["chelsea"], "--html", tmp_path / "p.html"), "one image per page"),
    ):
        one_error_line(run_cli(*base, *args), message)
    assert existing.read_text() == "mine" and not (tmp_path / "p.html").exists()


def test_html_alone_writes_no_png_and_overwrite_replaces(run_cli, b0_checkpoint, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "out" / "page.html"  # a missing folder is made
    result = run_cli("visualize-clusters", photos["coffee"], "--checkpoint", b0_checkpoint, "--html", page)
    assert result.exit_code == 0, result.output
    assert page.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no clusters.png without -o
    one_error_line(run_cli("visualize-clusters", photos["coffee"], "--checkpoint", b0_checkpoint, "--html", page),
                   "--overwrite")
    result = run_cli("visualize-clusters", photos["coffee"], "--checkpoint", b0_checkpoint, "--html", page,
                     "--blocks", "12", "--center", "1,0", "-o", "fig.png", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")
    embedded = json.loads(re.search(r'id="explorer-data">(.*?)</script>', page.read_text(encoding="utf-8"),
                                    re.S).group(1))
    assert [b["block"] for b in embedded["blocks"]] == [12] and embedded["initial"] == {"block": 12, "cell": [1, 0]}
    help_text = run_cli("visualize-clusters", "--help").text
    assert "--html" in help_text and "all DCC blocks" in help_text


# ---------------------------------------------------------------- the README's screenshot

def _readme_screenshot(out: Path) -> None:
    """B2 with random weights (seed 0) on scikit-image's astronaut at 224, all DCC blocks, a centre on the suit."""
    import skimage

    from dccnext_cli.viz.clusters import compute_clusters
    from dccnext_cli.viz.explorer import write_explorer
    from dccnext_cli.viz.model_source import load_model, parse_blocks

    torch.manual_seed(0)
    source = load_model(variant="b2")
    image = Path(skimage.__file__).parent / "data" / "astronaut.png"
    result = compute_clusters(source.model, image, (224, 224), parse_blocks("all-dcc", source.model))
    with tempfile.TemporaryDirectory() as tmp:
        page = write_explorer(Path(tmp) / "explorer.html", result, source, (9, 5))
        print(f"{page.stat().st_size / 1e3:.0f} kB page")
        driver = start_chrome(1200, 1260)
        try:
            open_page(driver, page, "#block=7&cell=9,5")
            screenshot(driver, out)
        finally:
            stop_chrome(driver)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's dccnext_cli, as pytest uses
    _readme_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/explorer.png"))
