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

Slide layout, made for a projector (a 1280x720 canvas, body text 28 px, code 22 px):
- a markdown cell that starts with a heading opens a slide; other markdown, and every code
  cell, appears on the next click (a fragment), so that a class can guess before it sees;
- a code cell shows only its output: the harness and assert code that makes a notebook a
  proof would crowd a slide. Tag a cell `slides-show-input` to show its code too (the
  lesson's own loop is shown with harness.show_source, as output). A code cell with no
  output is left out, and so is any cell whose slide type is `skip` (set-up, tear-down);
- when what follows a heading would not fit on one slide, the rest goes on a new slide below
  it (a sub-slide) that repeats the heading, so that no slide scrolls and none lacks a title.
  The heights are estimated from the text, the outputs and the pictures' sizes;
  tests/test_exports.py measures the real ones in Chromium;
- a cell's `notes` metadata (markdown: the question to ask, the answer the next click shows,
  the demo to run) goes into the slide's speaker notes, shown in reveal.js's speaker view (S)
  and nowhere else.
"""

import argparse
import base64
import html
import re
import shutil
import struct
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


# The projector's canvas and what fits on it, in CSS pixels (see the deck template's styles).
CANVAS_WIDTH, CANVAS_HEIGHT = 1280, 720
ROOM = 610  # height for content on one slide, with a safety margin
TEXT_LINE, TEXT_CHARS = 40, 76  # 28 px text: line height, characters per line (wrapping)
CODE_LINE, CODE_CHARS = 31, 82  # 22 px code
HEADING = {1: 90, 2: 76, 3: 62}  # a heading with its margins
PICTURE_MAX = 520  # the template's max-height for a picture
SHOW_INPUT_TAG = "slides-show-input"


def wrapped(lines, width):
    return sum(max(1, -(-len(line) // width)) for line in lines)


def table_row_height(line):
    cells = line.strip().strip("|").split("|")
    width = max(8, TEXT_CHARS // len(cells) - 2)
    return max(-(-len(c.strip()) // width) for c in cells) * TEXT_LINE + 12


def markdown_blocks(source):
    """A markdown text cut where a slide may be cut: between paragraphs, and between the rows
    of a table (each piece of a table repeats its header). [(text, estimated height)]"""
    blocks, lines, height = [], [], 0
    header = None  # a table's header and separator lines, while in a table
    fence = False

    def flush():
        nonlocal lines, height
        if lines:
            blocks.append(("\n".join(lines), height))
        lines, height = [], 0

    code = []  # the lines of a fenced code block, while in one
    for line in source.splitlines():
        if line.startswith("```"):
            if not fence:
                flush()
                opening = line
                code = []
            else:  # a long listing goes on several slides, cut at blank lines where it can
                for piece in code_pieces(code):
                    blocks.append(("\n".join([opening, *piece, line]),
                                   wrapped(piece, CODE_CHARS) * CODE_LINE + 40))
            fence = not fence
            continue
        if fence:
            code.append(line)
            continue
        if line.startswith("|"):
            if header is None:
                flush()
                header = [line]
                height += table_row_height(line)
            elif len(header) == 1 and set(line) <= set("|-: "):
                header.append(line)
            else:
                row = table_row_height(line)
                if height + row > ROOM - HEADING[2] and len(lines) > 2:
                    flush()
                    lines, height = list(header), table_row_height(header[0])
                height += row
            lines.append(line)
            continue
        if header is not None:
            header = None
            flush()
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            height += HEADING.get(len(line) - len(line.lstrip("#")), 62)
        else:
            height += wrapped([line], TEXT_CHARS) * TEXT_LINE + (18 if not lines else 0)
        lines.append(line)
    flush()
    return blocks


def code_pieces(code):
    """Lines of code cut into pieces that each fit on a slide below its heading, preferring
    to cut after a blank line."""
    most = (ROOM - HEADING[2] - 40) // CODE_LINE
    pieces = []
    while len(code) > most:
        blank = [i for i in range(most // 2, most) if not code[i].strip()]
        cut = blank[-1] + 1 if blank else most
        pieces.append(code[:cut])
        code = code[cut:]
    return pieces + [code]


def png_size(data):
    raw = base64.b64decode(data[:64])
    return struct.unpack(">II", raw[16:24])


def output_pieces(out):
    """One output of a code cell cut into pieces that each fit on a slide:
    [(output, estimated height)]."""
    data = out.get("data", {})
    if out.get("output_type") == "stream":
        pieces, chunk, height = [], [], 16
        for line in out.get("text", "").splitlines(keepends=True):
            h = wrapped([line.rstrip("\n")], CODE_CHARS) * CODE_LINE
            if chunk and height + h > ROOM - HEADING[2]:
                pieces.append((dict(out, text="".join(chunk)), height))
                chunk, height = [], 16
            chunk.append(line)
            height += h
        return pieces + ([(dict(out, text="".join(chunk)), height)] if chunk else [])
    if "image/png" in data:
        width, tall = png_size(data["image/png"])
        return [(out, min(PICTURE_MAX, (CANVAS_WIDTH - 100) * tall / width) + 16)]
    if "text/markdown" in data:
        return [(dict(out, data=dict(data, **{"text/markdown": text})), height + 16)
                for text, height in markdown_blocks(data["text/markdown"])]
    if "text/html" in data:
        return [(out, data["text/html"].count("<tr") * 46 + 16)]
    return [(out, wrapped(data.get("text/plain", "").splitlines(), CODE_CHARS) * CODE_LINE + 16)]


def pieces_of(cell):
    """A cell cut into pieces for slides: [(a copy of the cell holding one piece, height)]."""
    def piece(i, **fields):  # a copy with its own id: ids are unique within a notebook
        return nbformat.from_dict(dict(cell, **fields, id=f"{cell.get('id', 'cell')}-{i}"))

    if cell.cell_type == "markdown":
        return [(piece(i, source=text), height)
                for i, (text, height) in enumerate(markdown_blocks(cell.source))]
    tags = cell.metadata.get("tags", [])
    shown = SHOW_INPUT_TAG in tags
    pieces = []
    for out in cell.get("outputs", []):
        pieces += output_pieces(out)
    result = []
    for i, (out, height) in enumerate(pieces or [(None, 0)]):
        copy = piece(i, outputs=[out] if out else [])
        copy.metadata = nbformat.from_dict(dict(cell.metadata))
        if shown and i == 0:
            height += wrapped(cell.source.splitlines(), CODE_CHARS) * CODE_LINE + 24
        else:
            copy.metadata["tags"] = [t for t in tags if t not in (SHOW_INPUT_TAG, HIDE_INPUT_TAG)] \
                + [HIDE_INPUT_TAG]
        result.append((copy, height))
    return result


def lay_out_deck(nb):
    """The notebook's cells as they go into the deck, each with its slide type (see the
    docstring): skipped and empty cells left out, long slides continued below, notes added."""
    cells, heading, used = [], None, 0

    def new_cell(source, slide_type):
        cell = nbformat.v4.new_markdown_cell(source)
        cell.metadata["slideshow"] = {"slide_type": slide_type}
        return cell

    for cell in nb.cells:
        if cell.metadata.get("slideshow", {}).get("slide_type") in ("skip", "notes"):
            continue
        if cell.cell_type == "code" and not cell.get("outputs") \
                and SHOW_INPUT_TAG not in cell.metadata.get("tags", []):
            continue
        starts_slide = cell.cell_type == "markdown" and cell.source.lstrip().startswith("#")
        for i, (piece, height) in enumerate(pieces_of(cell)):
            piece.metadata["slideshow"] = {"slide_type": "fragment" if i == 0 else "-"}
            if starts_slide and i == 0:
                heading = cell.source.lstrip().splitlines()[0]
                piece.metadata["slideshow"]["slide_type"], used = "slide", 0
            elif heading is not None and used + height > ROOM and used > HEADING[2] + 40:
                cells.append(new_cell(heading, "subslide"))
                used = HEADING.get(len(heading) - len(heading.lstrip("#")), 62)
            used += height
            cells.append(piece)
            if i == 0 and cell.metadata.get("notes"):  # on the slide where the cell starts
                cells.append(new_cell(cell.metadata["notes"], "notes"))
    nb.cells = cells


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
            reveal_width=str(CANVAS_WIDTH),
            reveal_height=str(CANVAS_HEIGHT),
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
            lay_out_deck(nb)
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
