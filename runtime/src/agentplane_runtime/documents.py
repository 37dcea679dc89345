"""Documents to chunks: parse text, markdown, HTML and PDF; split with overlap, keeping markdown
sections (their heading path is repeated on every chunk) and code blocks together."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

CHUNK_CHARS = 1200
OVERLAP_CHARS = 200

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")


class DocumentError(ValueError):
    """The upload cannot be read as the type it claims."""


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    index: int
    section: str


def detect_kind(filename: str, content_type: str | None) -> str:
    name = filename.lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    if name.endswith(".pdf") or ctype == "application/pdf":
        return "pdf"
    if name.endswith((".html", ".htm")) or ctype in ("text/html", "application/xhtml+xml"):
        return "html"
    if name.endswith((".md", ".markdown")) or ctype == "text/markdown":
        return "markdown"
    return "text"


def extract_text(data: bytes, kind: str) -> str:
    """The document's text (markdown for HTML: headings become `#` lines, `pre` fenced code)."""
    if kind == "pdf":
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(data))
            pages = [page.extract_text() or "" for page in reader.pages]
        except (PyPdfError, ValueError, KeyError, TypeError) as exc:
            raise DocumentError("the file is not a readable PDF") from exc
        return "\n\n".join(p.strip() for p in pages if p.strip())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError("the document is not UTF-8 text") from exc
    text = text.replace("\r\n", "\n").replace("\x00", "")
    if kind == "html":
        parser = _HtmlToMarkdown()
        parser.feed(text)
        parser.close()
        return parser.text()
    return text


class _HtmlToMarkdown(HTMLParser):
    _BLOCK = frozenset(
        {"p", "div", "li", "br", "tr", "section", "article", "table", "ul", "ol", "blockquote"}
    )
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skip = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag == "pre":
            self._pre += 1
            self._out.append("\n\n```\n")
        elif tag in self._BLOCK:
            self._out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._out.append("\n\n")
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
            self._out.append("\n```\n\n")
        elif tag in self._BLOCK:
            self._out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self._out.append(data if self._pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        return re.sub(r"\n{3,}", "\n\n", "".join(self._out)).strip()


def _blocks(text: str) -> list[tuple[str, str]]:
    """(section path, block) pairs: paragraphs and whole fenced code blocks, under their headings."""
    blocks: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    current: list[str] = []
    fence: str | None = None

    def section() -> str:
        return " > ".join(title for _, title in path)

    def flush() -> None:
        if current and any(line.strip() for line in current):
            blocks.append((section(), "\n".join(current).strip("\n")))
        current.clear()

    for line in text.split("\n"):
        if fence is not None:
            current.append(line)
            if line.strip().startswith(fence):
                fence = None
                flush()
            continue
        match = _FENCE.match(line.strip())
        if match:
            flush()
            fence = match.group(1)
            current.append(line)
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading.group(2)))
            continue
        if not line.strip():
            flush()
            continue
        current.append(line)
    flush()
    return blocks


def _split_long(block: str, size: int, overlap: int) -> list[str]:
    if len(block) <= size:
        return [block]
    pieces = []
    start = 0
    while start < len(block):
        end = min(len(block), start + size)
        if end < len(block):
            cut = max(block.rfind("\n", start + size // 2, end), block.rfind(" ", start + size // 2, end))
            if cut > start:
                end = cut
        pieces.append(block[start:end].strip())
        if end >= len(block):
            break
        start = max(end - overlap, start + 1)
    return [p for p in pieces if p]


def chunk_text(text: str, *, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[Chunk]:
    """Chunks of about `size` characters, each starting with its section's heading path;
    consecutive chunks of a section share about `overlap` characters; a code block is never split
    unless it alone is over twice `size`."""
    chunks: list[Chunk] = []
    current: list[str] = []
    section = ""
    fresh = False

    def emit() -> None:
        nonlocal current, fresh
        if not fresh:
            return
        body = "\n\n".join(current)
        prefix = f"{section}\n\n" if section else ""
        chunks.append(Chunk(prefix + body, len(chunks), section))
        tail = body[-overlap:] if overlap and len(body) > overlap else ""
        # the overlap never cuts into a code block
        current = [tail[tail.find(" ") + 1 :]] if tail and "```" not in tail and "~~~" not in tail else []
        fresh = False

    for block_section, block in _blocks(text):
        if block_section != section:
            emit()
            current = []
            section = block_section
        is_code = block.lstrip().startswith(("```", "~~~"))
        parts = [block] if is_code and len(block) <= size * 2 else _split_long(block, size, overlap)
        for part in parts:
            if fresh and sum(len(c) + 2 for c in current) + len(part) > size:
                emit()
            current.append(part)
            fresh = True
    emit()
    return chunks
