"""report.html: one self-contained page per job — figures inline as PNG data URIs, no scripts,
no external files — so it opens from disk, can be mailed and survives moving the folder."""

from __future__ import annotations

import base64
import html
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from ember.io.atomic import atomic_path
from ember.report.plots import png_bytes

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; } code, pre { background: #f4f4f4; padding: 0.2em 0.4em; }
pre { white-space: pre-wrap; word-break: break-all; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.v { font-variant-numeric: tabular-nums; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em; } figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.9em; color: #444; max-width: 700px; }
"""


@dataclass
class Report:
    """What a job shows: key numbers, figures (caption, PNG) and its settings.

    `command` is the process's argv (as `job.json` records it); `links` are (label, relative path)."""

    job: str
    title: str
    version: str = ""
    command: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    numbers: list[tuple[str, str]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)

    def number(self, label: str, value: object) -> None:
        self.numbers.append((label, str(value)))

    def figure(self, caption: str, source: Figure | Path | str | bytes) -> None:
        self.figures.append((caption, png_bytes(source)))

    def link(self, label: str, relative_path: str) -> None:
        self.links.append((label, relative_path))

    def html(self) -> str:
        esc = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f'<p class="meta">ember {esc(self.job)} · Ember {esc(self.version)} · '
            f'{esc(time.strftime("%Y-%m-%d %H:%M"))}</p>',
        ]
        if self.command:
            parts.append(f"<h2>Command</h2><pre>{esc(shlex.join(self.command))}</pre>")
        if self.numbers:
            rows = "".join(f'<tr><th>{esc(k)}</th><td class="v">{esc(v)}</td></tr>' for k, v in self.numbers)
            parts.append(f"<h2>Key numbers</h2><table>{rows}</table>")
        if self.links:
            items = "".join(f'<li><a href="{esc(p)}">{esc(label)}</a></li>' for label, p in self.links)
            parts.append(f"<h2>Jobs</h2><ul>{items}</ul>")
        if self.figures:
            figs = "".join(
                f'<figure><img alt="{esc(c)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                f"<figcaption>{esc(c)}</figcaption></figure>"
                for c, b in self.figures
            )
            parts.append(f'<h2>Figures</h2><div class="figs">{figs}</div>')
        if self.settings:
            parts.append(f"<h2>Settings</h2><pre>{esc(json.dumps(self.settings, indent=2))}</pre>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        """Write the page atomically to `path`."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.html(), encoding="utf-8")
        return path
