"""The slides and the static edition, opened in a real browser.

Both are built with the command `make slides` and `make html` run (tools/export/build.py) into
a temporary folder, served from a loopback HTTP server, and opened in Debian's headless
Chromium. The checks are about what a reader or a class sees: every lesson listed in lesson
order, links between lessons that lead somewhere, no error output, pictures that load, a
reveal.js deck that starts and moves, and nothing fetched from outside this machine.
"""

import functools
import http.server
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tools" / "export" / "build.py"
sys.path.insert(0, str(BUILD.parent))
from browser import Browser  # noqa: E402

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def heading(path):
    """A notebook's first markdown heading, as its author wrote it."""
    for cell in read(path)["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def pictures(path, slides=False):
    """How many PNG outputs the notebook holds (in the deck: outside skipped cells)."""
    count = 0
    for cell in read(path)["cells"]:
        if slides and cell.get("metadata", {}).get("slideshow", {}).get("slide_type") == "skip":
            continue
        count += sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
    return count


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Both editions built into one folder and served on a free loopback port."""
    out = tmp_path_factory.mktemp("exports")
    builds = {kind: subprocess.Popen(  # both at once: the second in a core the first leaves
        [sys.executable, str(BUILD), kind, str(out / kind)], cwd=ROOT, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) for kind in ("slides", "html")}
    try:
        said = {kind: build.communicate(timeout=120)[1] for kind, build in builds.items()}
    finally:
        for build in builds.values():
            build.kill()  # no-op once it has exited
            build.wait()
    for kind, build in builds.items():
        assert build.returncode == 0, f"build.py {kind} failed:\n{said[kind]}"
        assert "warning" not in said[kind], f"build.py {kind}: {said[kind]}"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=out))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", out
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    with Browser(chromium) as b:
        b.open_tab()
        yield b


def visit(browser, url, base):
    """Open url; fail if it fetched anything but this server's files and embedded data."""
    requested = browser.goto(url)
    outside = [u[:80] for u in requested if not u.startswith((base, "data:"))]
    assert not outside, f"{url} fetched from outside: {outside}"


def check_page(browser, url, png_count):
    """No error output, every picture decoded, every relative link answered 200."""
    assert browser.evaluate("document.querySelectorAll('.output_error').length") == 0, url
    # A traceback in what a cell printed (code may well mention the word: lesson 06 asserts on it).
    shown = browser.evaluate("[...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.textContent).join('\\n')")
    assert "Traceback" not in shown, url
    images = browser.evaluate("[...document.images].map(i => i.complete && i.naturalWidth)")
    assert len(images) == png_count and all(images), f"{url}: pictures {images}, expected {png_count}"
    statuses = browser.evaluate(
        """Promise.all([...document.querySelectorAll('a[href]')]
             .map(a => a.href)
             .filter(h => h.startsWith(location.origin) && !h.startsWith(location.href + '#'))
             .map(h => fetch(h, {method: 'HEAD'}).then(r => [h, r.status])))"""
    )
    broken = [(href, status) for href, status in statuses if status != 200]
    assert not broken, f"{url}: links that lead nowhere: {broken}"
    assert not browser.errors(), f"{url}: JavaScript errors {browser.errors()}"


def test_index_lists_every_lesson_in_order(site, browser):
    base, _ = site
    for kind, suffix in (("html", ".html"), ("slides", ".slides.html")):
        visit(browser, f"{base}{kind}/index.html", base)
        listed = browser.evaluate("[...document.querySelectorAll('ol.lessons a')].map(a => [a.textContent, a.getAttribute('href')])")
        assert listed == [[heading(p), p.stem + suffix] for p in LESSONS]
        check_page(browser, f"{base}{kind}/index.html", 0)


@pytest.mark.parametrize("position", range(len(LESSONS)), ids=[p.stem for p in LESSONS])
def test_static_page(site, browser, position):
    base, _ = site
    lesson = LESSONS[position]
    url = f"{base}html/{lesson.stem}.html"
    visit(browser, url, base)
    assert browser.evaluate("document.title") == heading(lesson)
    assert browser.evaluate("document.querySelector('h1').textContent.replace('¶', '').trim()") == heading(lesson)
    # The bar of links: previous and next lesson, and the index.
    links = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('nav.workbook-nav-top a')].map(a => [a.rel, a.getAttribute('href')]))"
    )
    expected = {"index": "index.html"}
    if position > 0:
        expected["prev"] = LESSONS[position - 1].stem + ".html"
    if position + 1 < len(LESSONS):
        expected["next"] = LESSONS[position + 1].stem + ".html"
    assert links == expected
    check_page(browser, url, pictures(lesson))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_deck(site, browser, lesson, tmp_path):
    base, _ = site
    url = f"{base}slides/{lesson.stem}.slides.html"
    visit(browser, url, base)
    ready = browser.evaluate(
        "new Promise(done => Reveal.isReady() ? done(true) : Reveal.on('ready', () => done(true)))"
    )
    assert ready and browser.evaluate("document.querySelector('.reveal').classList.contains('ready')")
    slides = browser.evaluate("Reveal.getTotalSlides()")
    assert slides > 1
    title = browser.evaluate("Reveal.getCurrentSlide().querySelector('h1').textContent.replace('¶', '').trim()")
    assert title == heading(lesson)
    # The deck moves: the last slide is reachable and is not the first.
    browser.evaluate("""Reveal.configure({transition: 'none'});
        const last = Reveal.getIndices(Reveal.getSlides().at(-1)); Reveal.slide(last.h, last.v); true""")
    assert browser.evaluate("Reveal.isLastSlide()") and not browser.evaluate("Reveal.isFirstSlide()")
    check_page(browser, url, pictures(lesson, slides=True))


# Every slide of a deck, with all its fragments shown, as the back row of a room sees it:
# computed sizes in CSS pixels of the 1280x720 canvas that reveal.js scales to the screen.
EVERY_SLIDE = """(() => {
  Reveal.configure({transition: 'none', fragments: false});
  const slides = [];
  for (const s of Reveal.getSlides()) {
    const i = Reveal.getIndices(s);
    Reveal.slide(i.h, i.v);
    const sizes = selector => [...s.querySelectorAll(selector)]
      .filter(e => e.textContent.trim() && !e.closest('aside.notes'))
      .map(e => parseFloat(getComputedStyle(e).fontSize));
    const notes = s.querySelector('aside.notes');
    slides.push({
      where: `slide ${i.h + 1}.${(i.v || 0) + 1}`,
      opens_section: !i.v,
      heading: !!s.querySelector('h1, h2, h3'),
      overflow: s.scrollHeight - s.clientHeight,
      text: Math.min(99, ...sizes('.jp-RenderedHTMLCommon p, .jp-RenderedHTMLCommon li')),
      code: Math.min(99, ...sizes('pre, pre code')),
      pictures: [...s.querySelectorAll('img')].map(
        img => img.getBoundingClientRect().width / s.getBoundingClientRect().width),
      markers: s.textContent.includes('NBVAL'),
      notes: notes ? notes.textContent.trim().length : 0,
      notes_hidden: !notes || getComputedStyle(notes).display === 'none',
    });
  }
  return slides;
})()"""


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_deck_is_legible_from_the_back_row(site, browser, lesson):
    """Text at least 28 px and code 22 px on a 1280x720 canvas, pictures the slide's width, no
    slide that scrolls or lacks a heading, no nbval marker shown, and speaker notes on every
    slide that opens a section, in the speaker view only."""
    base, _ = site
    visit(browser, f"{base}slides/{lesson.stem}.slides.html", base)
    browser.evaluate("new Promise(done => Reveal.isReady() ? done(true) : Reveal.on('ready', () => done(true)))")
    assert browser.evaluate("[Reveal.getConfig().width, Reveal.getConfig().height]") == [1280, 720]
    slides = browser.evaluate(EVERY_SLIDE)
    problems = []
    for s in slides:
        if s["overflow"] > 1:
            problems.append(f"{s['where']} is {s['overflow']} px too tall and would scroll")
        if not s["heading"]:
            problems.append(f"{s['where']} has no heading")
        if s["text"] < 28 or s["code"] < 22:
            problems.append(f"{s['where']}: text {s['text']} px, code {s['code']} px")
        if any(width < 0.8 for width in s["pictures"]):
            problems.append(f"{s['where']}: a picture narrower than the slide {s['pictures']}")
        if s["markers"]:
            problems.append(f"{s['where']} shows an NBVAL marker")
        if s["opens_section"] and not s["notes"]:
            problems.append(f"{s['where']} opens a section without speaker notes")
        if not s["notes_hidden"]:
            problems.append(f"{s['where']}: its speaker notes show on the slide")
    assert not problems, "\n".join(problems)


def test_a_deck_as_a_person_sees_it(site, browser, tmp_path):
    """A screenshot of a picture slide: text and the plot are drawn, not a blank page."""
    base, _ = site
    visit(browser, f"{base}slides/{LESSONS[0].stem}.slides.html", base)
    browser.evaluate("new Promise(done => Reveal.isReady() ? done(true) : Reveal.on('ready', () => done(true)))")
    # The first slide that holds a picture, with all its fragments shown.
    found = browser.evaluate(
        """(() => { Reveal.configure({transition: 'none', fragments: false});
                    const s = Reveal.getSlides().find(s => s.querySelector('img'));
                    if (!s) return false;
                    const i = Reveal.getIndices(s); Reveal.slide(i.h, i.v); return true; })()"""
    )
    if not found:
        pytest.skip("the first lesson has no picture")
    # Wait until its pictures are decoded and two frames have been painted, then look at it.
    browser.evaluate(
        """Promise.all([...Reveal.getCurrentSlide().querySelectorAll('img')].map(i => i.decode()))
             .then(() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true)))))"""
    )
    shot = browser.screenshot(tmp_path / "deck.png")
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    dark = sum(image.histogram()[:100])  # text and axes
    assert image.size[0] >= 1000 and dark > 1000, f"the slide looks blank: {shot}"
    visible = browser.evaluate(
        "(() => { const r = Reveal.getCurrentSlide().querySelector('img').getBoundingClientRect();"
        " return r.width > 100 && r.height > 50 && r.top < innerHeight && r.bottom > 0; })()"
    )
    assert visible, "the picture is not on screen"
