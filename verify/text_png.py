"""Render a command's text output (a table as the terminal shows it) into a PNG, for the docs.

    robustkit table ... | python verify/text_png.py docs/img/table.png --title "robustkit table ..."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def align(text: str) -> list[str]:
    """The lines of ``text`` with each Markdown table's columns padded to one width (as a Markdown
    preview shows it; numbers right-aligned where the separator row says ``---:``)."""
    lines = text.rstrip("\n").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        rows = [[c.strip() for c in ln.strip().strip("|").split(" | " if n != 1 else "|")]
                for n, ln in enumerate(lines[i:j])]
        right = [c.endswith(":") for c in rows[1]] if len(rows) > 1 else [False] * len(rows[0])
        widths = [max(len(r[k]) for r in rows if k < len(r) and not set(r[k]) <= set("-:")) for k in range(len(rows[0]))]
        for n, row in enumerate(rows):
            if n == 1:
                out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
            else:
                out.append("| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)) + " |")
        i = j
    return out


def render(text: str, path: Path, title: str = "") -> Path:
    lines = ([f"$ {title}", ""] if title else []) + align(text)
    width = max(len(ln) for ln in lines)
    fig = Figure(figsize=(0.075 * width + 0.4, 0.19 * len(lines) + 0.4))
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 0.98, "\n".join(lines), family="monospace", fontsize=9, color="#e6e6e6", va="top", ha="left",
             linespacing=1.35)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, facecolor=fig.get_facecolor())
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--title", default="", help="the command line, shown above the output")
    args = ap.parse_args()
    print(render(sys.stdin.read(), args.out, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
