"""The workbook's notebooks as reveal.js decks (`make slides`) or as static pages (`make html`).

    python tools/export/build.py slides OUTDIR
    python tools/export/build.py html OUTDIR

Both read every notebooks/NN_*.ipynb present, in lesson order, and never execute them: a class
or a reader sees exactly the outputs that are committed and that nbval checks; no server runs.
Both write an index.html that lists the lessons in order, turn a link to another lesson's
notebook (`02_et_echo.ipynb`) into a link to its deck or page, and copy a lesson script that a
notebook links to (`../lessons/05_udp_echo.py`) beside the pages, so that the link works.

Nothing the output needs is fetched from the network when it is opened: the pictures are
embedded in the pages, the nbconvert templates in templates/ drop the stock pages' CDN
scripts, and the decks use the copy of reveal.js in reveal.js/ (see its README.md), which is
copied beside them. A deck or page works from a USB stick in a room without internet.

Slide layout: a cell's `slideshow` metadata decides, as in JupyterLab's property inspector.
A cell without it gets the workbook's convention: a markdown cell that starts with a heading
opens a new slide, other markdown continues below it (a sub-slide), and a code cell is a
fragment of the slide of the text before it: the explanation shows first, the run (code and
output) on the next click, so a class can guess before it sees. `skip` hides set-up and
tear-down cells that teach nothing. In the decks, a cell tagged `slides-hide-input` shows only
its output (plotting code would crowd a slide), and no cell shows In/Out prompts.
"""

import argparse
import html
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter, SlidesExporter
from nbconvert.filters.markdown import markdown2html
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
REVEAL = HERE / "reveal.js"
REVEAL_DIR = "reveal.js"  # where the decks find it, relative to themselves

LESSON_GLOB = "[0-9][0-9]_*.ipynb"
HIDE_INPUT_TAG = "slides-hide-input"
# href="02_et_echo.ipynb" or href="02_et_echo.ipynb#section": a link to another lesson.
LESSON_LINK = re.compile(r'href="(\d\d_[\w-]+)\.ipynb(#[^"]*)?"')
# href="../lessons/05_udp_echo.py": a workbook file, relative to notebooks/.
FILE_LINK = re.compile(r'href="\.\./((?:lessons|exercises|solutions)/[\w.-]+)"')

SUFFIX = {"slides": ".slides.html", "html": ".html"}


def lessons():
    """(path, notebook) for every lesson notebook, in lesson order (the NN_ prefix)."""
    return [(path, nbformat.read(path, as_version=4)) for path in sorted(NOTEBOOKS.glob(LESSON_GLOB))]


def title_of(path, nb):
    """The text of the notebook's first heading ("Lesson 01: ..."), else its file name."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def summary_of(nb):
    """The first paragraph after the title heading, as markdown; empty when there is none."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        paragraphs = [p.strip() for p in cell.source.split("\n\n")]
        if paragraphs and paragraphs[0].startswith("#"):
            paragraphs = paragraphs[1:]
        for paragraph in paragraphs:
            if paragraph and not paragraph.startswith(("#", "```")):
                return paragraph
        return ""
    return ""


def apply_slide_convention(nb):
    """Give every cell without a slide type the workbook's default one (see the docstring)."""
    for cell in nb.cells:
        show = cell.metadata.setdefault("slideshow", {})
        if "slide_type" in show:
            continue
        if cell.cell_type == "markdown":
            show["slide_type"] = "slide" if cell.source.lstrip().startswith("#") else "subslide"
        else:
            show["slide_type"] = "fragment"


def exporter_for(kind):
    config = Config()
    config.TemplateExporter.extra_template_basedirs = [str(TEMPLATES)]
    if kind == "slides":
        config.TemplateExporter.exclude_input_prompt = True
        config.TemplateExporter.exclude_output_prompt = True
        config.TagRemovePreprocessor.enabled = True
        config.TagRemovePreprocessor.remove_input_tags = {HIDE_INPUT_TAG}
        return SlidesExporter(
            config=config,
            template_name="workbook_slides",
            reveal_url_prefix=REVEAL_DIR,
            reveal_theme="white",
            reveal_width="1280",
            reveal_height="800",
        )
    return HTMLExporter(config=config, template_name="workbook_html")


def link_lessons(page, kind, present, warnings, source, outdir):
    """Point links to lesson notebooks at the lesson's deck or page, and links to a lesson
    script (or exercise) at a copy of it beside the pages; note any target that is missing."""

    def to_lesson(match):
        stem, anchor = match.group(1), match.group(2) or ""
        if stem not in present:
            warnings.append(f"{source}: links to {stem}.ipynb, which is not in notebooks/")
        return f'href="{stem}{SUFFIX[kind]}{anchor}"'

    def to_file(match):
        relative = match.group(1)
        if (ROOT / relative).is_file():
            (outdir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / relative, outdir / relative)
        else:
            warnings.append(f"{source}: links to ../{relative}, which does not exist")
        return f'href="{relative}"'

    return FILE_LINK.sub(to_file, LESSON_LINK.sub(to_lesson, page))


INDEX_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{heading}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em;
       line-height: 1.5; color: #222; }}
ol.lessons {{ padding-left: 1.2em; }}
ol.lessons li {{ margin-bottom: 1em; }}
ol.lessons a {{ font-size: 1.15em; font-weight: 600; }}
ol.lessons p {{ margin: 0.3em 0 0 0; }}
code {{ background: #f2f2f2; padding: 0 0.2em; }}
</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<p>{intro}</p>
<ol class="lessons">
{items}
</ol>
</main>
</body>
</html>
"""

INTRO = {
    "slides": "One reveal.js deck per lesson, made from the committed notebooks. In a deck: "
    "<kbd>Space</kbd> or the arrow keys move on, <kbd>Esc</kbd> shows every slide, <kbd>S</kbd> "
    "opens the speaker view, <kbd>F</kbd> goes full screen.",
    "html": "Every lesson as a page, with the outputs and pictures of a real run. To run the "
    "lessons yourself you need Linux (epoll exists nowhere else): <code>make lab</code> in the "
    "workbook's folder.",
}


def index_page(kind, entries):
    items = "\n".join(
        f'<li><a href="{html.escape(href)}">{html.escape(title)}</a>{markdown2html(summary) if summary else ""}</li>'
        for href, title, summary in entries
    )
    heading = "The epoll workbook: " + ("slides" if kind == "slides" else "lessons")
    return INDEX_PAGE.format(heading=heading, intro=INTRO[kind], items=items)


def build(kind, outdir):
    """Write the decks or pages and their index into outdir; return the warnings."""
    outdir = Path(outdir)
    found = lessons()
    if not found:
        sys.exit(f"error: no notebooks matching {LESSON_GLOB} in {NOTEBOOKS}")
    outdir.mkdir(parents=True, exist_ok=True)
    exporter = exporter_for(kind)
    present = {path.stem for path, _ in found}
    titles = [title_of(path, nb) for path, nb in found]
    hrefs = [path.stem + SUFFIX[kind] for path, _ in found]
    warnings, entries = [], []
    for i, (path, nb) in enumerate(found):
        if kind == "slides":
            apply_slide_convention(nb)
        nb.metadata["title"] = titles[i]  # the page's <title>
        neighbour = lambda j: {"href": hrefs[j], "title": titles[j]} if 0 <= j < len(found) else None
        resources = {
            "metadata": {"name": path.stem, "path": str(NOTEBOOKS)},
            "workbook": {"previous": neighbour(i - 1), "next": neighbour(i + 1)},
        }
        page, _ = exporter.from_notebook_node(nb, resources=resources)
        page = link_lessons(page, kind, present, warnings, path.name, outdir)
        (outdir / hrefs[i]).write_text(page, encoding="utf-8")
        entries.append((hrefs[i], titles[i], summary_of(nb)))
    (outdir / "index.html").write_text(index_page(kind, entries), encoding="utf-8")
    if kind == "slides":
        shutil.rmtree(outdir / REVEAL_DIR, ignore_errors=True)
        shutil.copytree(REVEAL, outdir / REVEAL_DIR, ignore=shutil.ignore_patterns("README.md"))
    return warnings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(SUFFIX))
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args()
    warnings = build(args.kind, args.outdir)
    for warning in warnings:
        print("warning:", warning, file=sys.stderr)
    print(f"wrote {args.outdir / 'index.html'} and {len(lessons())} lessons")


if __name__ == "__main__":
    main()
