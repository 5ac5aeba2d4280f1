"""Render report blocks as Markdown (figures as PNG files beside it) and as one HTML page with
the figures embedded as base64, so the page can be mailed or attached to a CI run on its own."""

from __future__ import annotations

import base64
import html
import re

from compress.report.build import Block

FIGURES_DIR = "report_files"

CSS = """
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; border-bottom: 1px solid #d0d7de; padding-bottom: 6px; }
h2 { font-size: 18px; margin-top: 28px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: right; }
td { white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
.text { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; }
figcaption { color: #57606a; font-size: 12.5px; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.fail { color: #cf222e; font-weight: 600; }
"""


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table":
            cells = [[c.replace("|", "\\|") for c in row] for row in b.rows]
            out.append("\n".join(["| " + " | ".join(b.headers) + " |",
                                  "|" + "---|" * len(b.headers)]
                                 + ["| " + " | ".join(row) + " |" for row in cells]))  # fmt: skip
        elif b.kind == "figure":
            out.append(f"![{b.text}]({FIGURES_DIR}/{b.name})\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            text = [not all(_numeric(row[i]) for row in b.rows) for i in range(len(b.headers))]
            head = "".join(_cell(h, t, "th") for h, t in zip(b.headers, text, strict=True))
            rows = "".join(
                "<tr>" + "".join(_cell(c, t) for c, t in zip(row, text, strict=True)) + "</tr>"
                for row in b.rows
            )
            body.append(
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        elif b.kind == "figure" and b.png is not None:
            data = base64.b64encode(b.png).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}">'
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """The little Markdown the blocks use: `code` and **bold**."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r'<span class="fail">\1</span>', escaped)


def _numeric(text: str) -> bool:
    return bool(re.match(r"^[-+]?[\d.,]+", text)) or text == "-"


def _cell(text: str, is_text: bool, tag: str = "td") -> str:
    """Numbers right-aligned (header too), words left-aligned."""
    css = ' class="text"' if is_text else ""
    content = html.escape(text) if tag == "th" else _inline(text)
    return f"<{tag}{css}>{content}</{tag}>"
