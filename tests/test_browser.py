"""The web page in a real browser: headless Chromium (Debian's package) driven by Playwright against
a real uvicorn on loopback with the shipped model and no database.

Upload a picture, wait for the program and its render, check that the 3D view drew, download the
STEP file and read it with CadQuery, look at one of the search's next-best programs (built through
/files) and back; a file that is not a picture gets one clear message. With
IMG2CQ_SCREENSHOT=docs/web_page.png the page with its answer is saved there (the README's picture).
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.live_server import live_server

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PICTURE = REPO / "benchmarks" / "pictures" / "images" / "syn-1000-test-0000036.png"  # seed-1000 test split
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, accept_downloads=True,
            viewport={"width": 1400, "height": 980})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def server():
    env = {"IMG2CQ_MODEL": str(REPO / "models" / "img2cq-cpu"), "IMG2CQ_DB": "", "IMG2CQ_EXEC_WORKERS": "2"}
    with live_server(env, unset=("IMG2CQ_MODEL", "DATABASE_URL")) as (base, _):
        yield base


def painted_pixels(page) -> int:
    return page.evaluate("""() => {
        const c = document.getElementById('view');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return n;
    }""")


@pytest.mark.integration
def test_the_page_turns_a_picture_into_a_program_a_render_a_3d_view_and_a_step_file(server, browser_page, tmp_path):
    import cadquery as cq

    started = time.perf_counter()
    page = browser_page
    page.goto(server + "/")
    assert page.title().startswith("img2cq")
    picture = tmp_path / "block.png"
    shutil.copy(PICTURE, picture)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert "import cadquery as cq" in page.inner_text("#program")
    assert page.inner_text("#valid") == "yes"
    page.wait_for_function("document.getElementById('render').naturalWidth > 0")
    page.wait_for_function("Number(document.getElementById('view').dataset.frames || 0) > 2")
    assert int(page.get_attribute("#view", "data-triangles")) > 10
    assert painted_pixels(page) > 2000  # the 3D view drew the solid
    assert page.is_hidden("#error") and page.is_hidden("#warning")
    kept_program, kept_render = page.inner_text("#program"), page.get_attribute("#render", "src")
    assert page.locator("#alternatives button").count() == 4  # the kept program and the search's three next-best

    with page.expect_download() as download:
        page.click("#download-step")
    assert download.value.suggested_filename == "block.step"
    step = tmp_path / "downloaded.step"
    download.value.save_as(step)
    solids = cq.importers.importStep(str(step)).solids().vals()
    assert solids and sum(s.Volume() for s in solids) > 0

    page.click("#alternatives button >> nth=1")  # the first next-best program, built through /files
    page.wait_for_selector("body[data-shown='next-best 1']", timeout=30_000)
    alternative = page.inner_text("#program")
    assert "import cadquery as cq" in alternative and alternative != kept_program
    assert page.get_attribute("#render", "src") != kept_render and page.is_hidden("#error")
    page.wait_for_function("Number(document.getElementById('view').dataset.triangles || 0) > 10")
    with page.expect_download() as download:
        page.click("#download-py")
    assert download.value.suggested_filename == "block.alt1.py"
    assert Path(download.value.path()).read_text() == alternative
    with page.expect_download() as download:
        page.click("#download-stl")
    assert download.value.suggested_filename == "block.alt1.stl"
    page.click("#alternatives button >> nth=0")  # back to the kept program, as it was
    assert page.get_attribute("body", "data-shown") == "kept" and page.inner_text("#program") == kept_program
    assert page.get_attribute("#render", "src") == kept_render

    if os.environ.get("IMG2CQ_SCREENSHOT"):
        page.mouse.move(10, 10)
        page.screenshot(path=str(REPO / os.environ["IMG2CQ_SCREENSHOT"]), full_page=True)
    print(f"browser round trip {time.perf_counter() - started:.1f} s (generation {page.get_attribute('body', 'data-seconds')} s)")

    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), "white").save(blank)
    page.set_input_files("#file", str(blank))
    page.wait_for_selector("#warning:not([hidden])", timeout=60_000)  # answered, with what is wrong with it
    assert "the picture is blank" in page.inner_text("#warning")

    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#error:not([hidden])")
    assert "not a PNG or JPEG" in page.inner_text("#error")
    assert page.is_hidden("#result")  # nothing of the earlier answer is left half-shown


def refusing(status: int, headers: dict, detail: str):
    def handler(route):
        route.fulfill(status=status, headers=headers, content_type="application/json", body='{"detail": "%s"}' % detail)
    return handler


@pytest.mark.integration
def test_the_page_loads_without_a_database_or_a_model(browser_page):
    env = {"IMG2CQ_DB": ""}
    with live_server(env, unset=("IMG2CQ_MODEL", "DATABASE_URL")) as (base, _):
        page = browser_page
        page.goto(base + "/")
        assert page.is_visible("#drop")
        page.set_input_files("#file", str(PICTURE))
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "no model configured" in page.inner_text("#error")
        assert page.is_hidden("#result")
        # what an overloaded server or one that refuses the upload answers, as the page words it
        for status, headers, detail, words in [
                (503, {"Retry-After": "7"}, "server busy: 64 requests already wait", "busy right now; please try again in 7 s"),
                (413, {}, "request body larger than 20971584 bytes", "too large"),
                (400, {}, "picture of 9000 x 9000 pixels is too large", "9000 x 9000")]:
            page.route("**/generate*", refusing(status, headers, detail))
            page.set_input_files("#file", str(PICTURE))
            page.wait_for_function("words => document.getElementById('error').textContent.includes(words)", arg=words)
            assert page.is_hidden("#result") and page.is_hidden("#status")
            assert page.is_enabled("#file")  # ready for the next try
            page.unroute("**/generate*")
