"""The migration report (`damdup migrate`) and the metadata audit (`damdup audit metadata`).

Figures, for the chosen units, from the index after a run:

- Redundancy of a unit (or folder) = its live assets that are non-canonical
  members of a duplicate cluster / its live assets. Clusters are the whole
  index's (as `damdup clusters` and `damdup status` show them, and as push
  marks them): a copy whose canonical sits in another unit is redundant too; a
  canonical never is. Confirmed copies (tiers exact and same_pixels) and
  copies awaiting review (near_identical) are counted apart as well.
- Bytes reclaimable = the sum of those copies' sizes (the platform's figure for
  the original, else the size of the bytes fingerprinted).
- Folder = the directory of the asset's original URL (its page URL when the
  platform gives no file URL): for file:// the directory on disk, for http(s)
  the directory of the URL path, query left out. Units on object stores and
  file shares get their real folders; platforms that file uploads by date or id
  get those.
- Metadata completeness: the share of live assets with location, date and
  contributing department, each and all three (as push's `metadata-missing`).

Everything that comes from a platform (names, ids, URLs, metadata) is hostile
input: escaped in the HTML, only http(s)/file links made clickable, and CSV
cells that a spreadsheet would run as a formula get a leading quote.
"""

from __future__ import annotations

import base64
import html
import io
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from connector.core.fingerprint import RECIPE
from connector.core.index import AssetRow, IndexStore
from connector.core.settings import Settings
from connector.core.sheets import write_csv
from connector.engine.clusters import Cluster, Shape, ShapeLookup
from connector.engine.links import default_link
from connector.engine.outbox import MANDATORY_METADATA, missing_metadata
from connector.engine.scan import current_clusters

CLUSTERS_SHOWN = 500  # in the HTML, largest first; clusters.csv has every one
FOLDERS_SHOWN = 300  # likewise, most redundant first; folders.csv has every one
THUMB_SIDE = 160  # long side of the thumbnails inlined in the HTML
LINK_SCHEMES = ("http", "https", "file")

UNIT_FIELDS = [
    "unit", "assets", "not_indexed", "clusters", "redundant", "redundant_confirmed",
    "redundant_to_review", "redundancy_pct", "bytes_reclaimable", "bytes_confirmed",
    "bytes_to_review",
]  # fmt: skip
FOLDER_FIELDS = [
    "unit", "folder", "assets", "redundant", "redundant_confirmed", "redundant_to_review",
    "redundancy_pct", "bytes_reclaimable",
]  # fmt: skip
CLUSTER_FIELDS = [
    "cluster", "cluster_tier", "role", "unit", "asset_id", "tier", "mark", "size_bytes",
    "folder", "url", "link", "reason", "phash_distance", "dhash_distance", "in_report",
]  # fmt: skip
METADATA_FIELDS = [
    "unit", "assets", "with_location", "with_date", "with_department", "complete",
    "location_pct", "date_pct", "department_pct", "complete_pct",
]  # fmt: skip
AUDIT_FIELDS = ["unit", "asset_id", "url", "missing"]


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def folder_of(asset: AssetRow) -> str:
    """The directory of the asset's original (else page) URL; see the module text."""
    url = asset.original_url or asset.url
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme == "file":
        return str(PurePosixPath(path).parent)
    directory = posixpath.dirname(path)
    return directory or "/"


def _size(asset: AssetRow, fingerprint_sizes: Mapping[str, Shape]) -> int:
    if asset.size_bytes:
        return asset.size_bytes
    shape = fingerprint_sizes.get(asset.sha256 or "")
    return shape.size_bytes if shape else 0


@dataclass
class Figures:
    """Redundancy and metadata counts of a unit, a folder or the whole report."""

    assets: int = 0
    not_indexed: int = 0
    redundant_confirmed: int = 0
    redundant_to_review: int = 0
    bytes_confirmed: int = 0
    bytes_to_review: int = 0
    with_metadata: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(MANDATORY_METADATA, 0)
    )
    complete: int = 0
    clusters: set[str] = field(default_factory=set)

    @property
    def redundant(self) -> int:
        return self.redundant_confirmed + self.redundant_to_review

    @property
    def bytes_reclaimable(self) -> int:
        return self.bytes_confirmed + self.bytes_to_review

    @property
    def redundancy_pct(self) -> float:
        return _pct(self.redundant, self.assets)

    def count_asset(self, asset: AssetRow) -> None:
        self.assets += 1
        if asset.error is not None:
            self.not_indexed += 1
        missing = missing_metadata(asset)
        for name in MANDATORY_METADATA:
            if name not in missing:
                self.with_metadata[name] += 1
        if not missing:
            self.complete += 1

    def count_copy(self, confirmed: bool, size_bytes: int) -> None:
        if confirmed:
            self.redundant_confirmed += 1
            self.bytes_confirmed += size_bytes
        else:
            self.redundant_to_review += 1
            self.bytes_to_review += size_bytes


@dataclass
class MigrationReport:
    units: list[str]
    per_unit: dict[str, Figures]
    per_folder: dict[tuple[str, str], Figures]
    total: Figures
    clusters: list[Cluster]  # those with an asset in a chosen unit, largest first
    sizes: dict[tuple[str, str], int]  # (unit, asset id) -> bytes, for members shown
    failed_units: dict[str, str]
    generated_at: str
    # Where a person opens an asset (its unit's Adapter.link); `url` is where
    # damdup reads it, for a folder a file on the damdup host.
    link: Callable[[AssetRow], str] = default_link

    @property
    def shown_units(self) -> set[str]:
        return set(self.units)

    def unit_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "unit": unit,
                "assets": figures.assets,
                "not_indexed": figures.not_indexed,
                "clusters": len(figures.clusters),
                "redundant": figures.redundant,
                "redundant_confirmed": figures.redundant_confirmed,
                "redundant_to_review": figures.redundant_to_review,
                "redundancy_pct": figures.redundancy_pct,
                "bytes_reclaimable": figures.bytes_reclaimable,
                "bytes_confirmed": figures.bytes_confirmed,
                "bytes_to_review": figures.bytes_to_review,
            }
            for unit, figures in self.per_unit.items()
        ]

    def folder_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [
            {
                "unit": unit,
                "folder": folder,
                "assets": figures.assets,
                "redundant": figures.redundant,
                "redundant_confirmed": figures.redundant_confirmed,
                "redundant_to_review": figures.redundant_to_review,
                "redundancy_pct": figures.redundancy_pct,
                "bytes_reclaimable": figures.bytes_reclaimable,
            }
            for (unit, folder), figures in self.per_folder.items()
        ]
        rows.sort(key=lambda r: (-r["redundant"], -r["bytes_reclaimable"], r["unit"], r["folder"]))
        return rows

    def metadata_rows(self) -> list[dict[str, Any]]:
        rows = []
        for unit, figures in self.per_unit.items():
            row: dict[str, Any] = {"unit": unit, "assets": figures.assets}
            for name in MANDATORY_METADATA:
                row[f"with_{name}"] = figures.with_metadata[name]
            row["complete"] = figures.complete
            for name in MANDATORY_METADATA:
                row[f"{name}_pct"] = _pct(figures.with_metadata[name], figures.assets)
            row["complete_pct"] = _pct(figures.complete, figures.assets)
            rows.append(row)
        return rows

    def cluster_rows(self) -> list[dict[str, Any]]:
        rows = []
        for cluster in self.clusters:
            common = {"cluster": cluster.id, "cluster_tier": cluster.tier.value}
            canonical = cluster.canonical
            rows.append(
                {
                    **common,
                    "role": "canonical",
                    "unit": canonical.unit,
                    "asset_id": canonical.asset_id,
                    "tier": "",
                    "mark": "canonical",
                    "size_bytes": self.sizes.get((canonical.unit, canonical.asset_id), 0),
                    "folder": folder_of(canonical),
                    "url": canonical.url,
                    "link": self.link(canonical),
                    "reason": cluster.reason,
                    "phash_distance": "",
                    "dhash_distance": "",
                    "in_report": "yes" if canonical.unit in self.shown_units else "no",
                }
            )
            for member in cluster.members:
                asset = member.asset
                rows.append(
                    {
                        **common,
                        "role": "copy",
                        "unit": asset.unit,
                        "asset_id": asset.asset_id,
                        "tier": member.edge.tier.value,
                        "mark": member.edge.mark,
                        "size_bytes": self.sizes.get((asset.unit, asset.asset_id), 0),
                        "folder": folder_of(asset),
                        "url": asset.url,
                        "link": self.link(asset),
                        "reason": "",
                        "phash_distance": member.edge.phash_distance,
                        "dhash_distance": member.edge.dhash_distance,
                        "in_report": "yes" if asset.unit in self.shown_units else "no",
                    }
                )
        return rows


def build_report(
    store: IndexStore,
    settings: Settings,
    units: Sequence[str],
    failed_units: dict[str, str] | None = None,
    link: Callable[[AssetRow], str] = default_link,
    read_original: Callable[[str], bytes | None] | None = None,
) -> MigrationReport:
    """The figures of `units` from the index as it is now; `read_original`
    reads a copy's original, to tell which one the others were made from."""
    chosen = list(units)
    wanted = set(chosen)
    fingerprint_sizes = ShapeLookup(store.fingerprint_columns(RECIPE))
    per_unit = {unit: Figures() for unit in chosen}
    per_folder: dict[tuple[str, str], Figures] = {}
    total = Figures()
    assets = [asset for asset in store.live_assets() if asset.unit in wanted]
    for asset in assets:
        folder = per_folder.setdefault((asset.unit, folder_of(asset)), Figures())
        for figures in (per_unit[asset.unit], folder, total):
            figures.count_asset(asset)
    clusters, _relations = current_clusters(store, settings, read_original)
    shown: list[Cluster] = []
    sizes: dict[tuple[str, str], int] = {}
    for cluster in clusters:
        involved = [cluster.canonical, *(m.asset for m in cluster.members)]
        if not any(asset.unit in wanted for asset in involved):
            continue
        shown.append(cluster)
        for asset in involved:
            sizes[(asset.unit, asset.asset_id)] = _size(asset, fingerprint_sizes)
            if asset.unit in wanted:
                per_unit[asset.unit].clusters.add(cluster.id)
                total.clusters.add(cluster.id)
        for member in cluster.members:
            asset = member.asset
            if asset.unit not in wanted:
                continue
            size = sizes[(asset.unit, asset.asset_id)]
            for figures in (
                per_unit[asset.unit],
                per_folder[(asset.unit, folder_of(asset))],
                total,
            ):
                figures.count_copy(member.edge.confirmed, size)

    def weight(cluster: Cluster) -> tuple[int, int, str]:
        reclaim = sum(sizes[(m.asset.unit, m.asset.asset_id)] for m in cluster.members)
        return (-len(cluster.members), -reclaim, cluster.id)

    shown.sort(key=weight)
    return MigrationReport(
        units=chosen,
        per_unit=per_unit,
        per_folder=per_folder,
        total=total,
        clusters=shown,
        sizes=sizes,
        failed_units=dict(failed_units or {}),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        link=link,
    )


# -- CSV ----------------------------------------------------------------------


def _write_csv(path: Path, fields: list[str], rows: Iterable[dict[str, Any]]) -> None:
    # utf-8-sig: spreadsheets read ä and ö right only with the byte order mark.
    with path.open("w", newline="", encoding="utf-8-sig") as target:
        write_csv(target, fields, rows)


# -- chart --------------------------------------------------------------------

CHART_WIDTH = 720
CHART_LABEL = 180  # px for unit names
CHART_ROW = 30
CHART_TOP = 40
CHART_BOTTOM = 30
BAR = "#c8553d"
GRID = "#d0d0d0"


def _chart_geometry(count: int) -> tuple[int, int]:
    plot = CHART_WIDTH - CHART_LABEL - 70
    height = CHART_TOP + CHART_ROW * max(count, 1) + CHART_BOTTOM
    return plot, height


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def redundancy_svg(report: MigrationReport) -> str:
    rows = report.unit_rows()
    plot, height = _chart_geometry(len(rows))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height}" '
        f'viewBox="0 0 {CHART_WIDTH} {height}" role="img" id="redundancy-chart" '
        'font-family="sans-serif" font-size="13">',
        "<title>Redundancy per unit (% of live assets that are copies)</title>",
        f'<text x="{CHART_LABEL}" y="20" font-weight="bold">'
        "Redundancy per unit (% of live assets that are copies)</text>",
    ]
    bottom = CHART_TOP + CHART_ROW * max(len(rows), 1)
    for pct in (0, 25, 50, 75, 100):
        x = CHART_LABEL + plot * pct / 100
        parts.append(
            f'<line x1="{x:.1f}" y1="{CHART_TOP - 6}" x2="{x:.1f}" y2="{bottom}" stroke="{GRID}"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#555">{pct} %</text>'
        )
    for index, row in enumerate(rows):
        y = CHART_TOP + CHART_ROW * index
        width = plot * row["redundancy_pct"] / 100
        parts.append(
            f'<text x="{CHART_LABEL - 8}" y="{y + 18}" text-anchor="end">'
            f"{html.escape(_short(row['unit']))}</text>"
            f'<rect class="bar" x="{CHART_LABEL}" y="{y + 4}" width="{width:.1f}" height="20" '
            f'fill="{BAR}" data-unit="{html.escape(row["unit"])}" '
            f'data-pct="{row["redundancy_pct"]}"/>'
            f'<text x="{CHART_LABEL + width + 6:.1f}" y="{y + 18}">{row["redundancy_pct"]} %</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def redundancy_png(report: MigrationReport, path: Path) -> None:
    rows = report.unit_rows()
    plot, height = _chart_geometry(len(rows))
    image = Image.new("RGB", (CHART_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font, bold = _font(13), _font(14)
    draw.text(
        (CHART_LABEL, 8), "Redundancy per unit (% of live assets that are copies)",
        fill="black", font=bold,
    )  # fmt: skip
    bottom = CHART_TOP + CHART_ROW * max(len(rows), 1)
    for pct in (0, 25, 50, 75, 100):
        x = CHART_LABEL + plot * pct / 100
        draw.line([(x, CHART_TOP - 6), (x, bottom)], fill=GRID)
        draw.text((x, bottom + 10), f"{pct} %", fill="#555555", font=font, anchor="mt")
    for index, row in enumerate(rows):
        y = CHART_TOP + CHART_ROW * index
        width = plot * row["redundancy_pct"] / 100
        draw.text((CHART_LABEL - 8, y + 14), _short(row["unit"]), fill="black", font=font,
                  anchor="rm")  # fmt: skip
        if width > 0:
            draw.rectangle([(CHART_LABEL, y + 4), (CHART_LABEL + width, y + 24)], fill=BAR)
        draw.text((CHART_LABEL + width + 6, y + 14), f"{row['redundancy_pct']} %", fill="black",
                  font=font, anchor="lm")  # fmt: skip
    image.save(path, "PNG", optimize=True)


# -- HTML ---------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { margin-bottom: 0.2em; }
.muted { color: #666; }
.failed { background: #fdecea; border: 1px solid #c0392b; padding: 0.6em 1em; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text { text-align: left; overflow-wrap: anywhere; max-width: 40em; min-width: 6em; }
.cluster { border-top: 1px solid #ccc; padding: 0.8em 0; }
.copies { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 180px; font-size: 0.8em; overflow-wrap: anywhere; }
figure img { max-width: 160px; max-height: 160px; display: block; border: 1px solid #bbb; }
figure.canonical img { border: 3px solid #2e7d32; }
.outside { opacity: 0.6; }
"""


def _thumb_uri(store: IndexStore, sha256: str | None, cache: dict[str, str]) -> str | None:
    if sha256 is None:
        return None
    if sha256 not in cache:
        fingerprint = store.fingerprint(sha256)
        if fingerprint is None:
            return None
        with Image.open(io.BytesIO(fingerprint.thumb)) as image:
            small = image.convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=75)
        cache[sha256] = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()
    return cache[sha256]


def _link(url: str) -> str:
    """A link to a platform's URL, or the URL as text when its scheme could run
    code (javascript:, data:) or is unknown."""
    text = html.escape(url)
    if urlsplit(url).scheme.lower() in LINK_SCHEMES:
        return f'<a href="{text}" rel="noreferrer noopener">open</a>'
    return f"<span>{text}</span>"


def _bytes(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else html.escape(str(value))


def _table(fields: list[str], rows: Iterable[dict[str, Any]], text: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(name.replace('_', ' '))}</th>" for name in fields)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{html.escape(str(row[name]))}</td>'
            if name in text
            else f"<td>{_number(row[name])}</td>"
            for name in fields
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(
    report: MigrationReport,
    store: IndexStore,
    asset: AssetRow,
    role: str,
    cache: dict[str, str],
) -> str:
    uri = _thumb_uri(store, asset.sha256, cache)
    name = html.escape(asset.asset_id)
    image = f'<img src="{uri}" alt="{name}">' if uri else '<div class="muted">no thumbnail</div>'
    size = report.sizes.get((asset.unit, asset.asset_id), 0)
    classes = "canonical" if role == "canonical" else "copy"
    if asset.unit not in report.shown_units:
        classes += " outside"
    return (
        f'<figure class="{classes}">{image}<figcaption>'
        f"<b>{html.escape(role)}</b> · {html.escape(asset.unit)}<br>{name}<br>"
        f"{_bytes(size)} · {_link(report.link(asset))}</figcaption></figure>"
    )


def _cluster_html(
    report: MigrationReport, store: IndexStore, cluster: Cluster, cache: dict[str, str]
) -> str:
    figures = [_figure(report, store, cluster.canonical, "canonical", cache)]
    for member in cluster.members:
        role = f"{member.edge.tier.value} copy"
        figures.append(_figure(report, store, member.asset, role, cache))
    return (
        f'<section class="cluster" data-cluster="{html.escape(cluster.id)}">'
        f"<h3>{html.escape(cluster.id)} · {len(cluster.members) + 1} copies · "
        f"{html.escape(cluster.tier.value)}</h3>"
        f"<p>Canonical: {html.escape(cluster.reason)}</p>"
        f'<div class="copies">{"".join(figures)}</div></section>'
    )


def report_html(report: MigrationReport, store: IndexStore, chart: str) -> str:
    total = report.total
    units = ", ".join(report.units)
    cards = [
        ("units", str(len(report.units))),
        ("assets", f"{total.assets:,}"),
        ("clusters", f"{len(total.clusters):,}"),
        ("redundant copies", f"{total.redundant:,}"),
        ("redundancy", f"{total.redundancy_pct} %"),
        ("bytes reclaimable", _bytes(total.bytes_reclaimable)),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No fetch of anything: images are data: URIs, styles inline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>damdup migration report: {html.escape(units)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>damdup migration report</h1>",
        f'<p class="muted">Units {html.escape(units)} · generated {report.generated_at}</p>',
    ]
    if report.failed_units:
        items = "".join(
            f"<li><b>{html.escape(unit)}</b>: {html.escape(reason)}</li>"
            for unit, reason in report.failed_units.items()
        )
        parts.append(
            '<div class="failed" id="failed-units"><b>Sync failed for some units</b>; their '
            f"figures are from what the index held before this run:<ul>{items}</ul></div>"
        )
    parts.append('<section id="summary"><h2>Summary</h2><div class="cards">')
    parts.extend(
        f'<div class="card"><span class="muted">{label}</span><b>{html.escape(value)}</b></div>'
        for label, value in cards
    )
    parts.append(
        "</div><p>Redundancy: live assets that are non-canonical members of a duplicate "
        "cluster, over live assets. Confirmed copies (exact or same pixels): "
        f"{total.redundant_confirmed:,}, {_bytes(total.bytes_confirmed)}; near-identical "
        f"copies awaiting review: {total.redundant_to_review:,}, "
        f"{_bytes(total.bytes_to_review)}.</p></section>"
    )
    parts.append(f'<section id="chart"><h2>Redundancy per unit</h2>{chart}</section>')
    parts.append('<section id="units"><h2>Units</h2>')
    parts.append(_table(UNIT_FIELDS, report.unit_rows(), ("unit",)) + "</section>")
    folders = report.folder_rows()
    parts.append('<section id="folders"><h2>Folders</h2>')
    if len(folders) > FOLDERS_SHOWN:
        parts.append(
            f'<p class="muted">The {FOLDERS_SHOWN} most redundant of {len(folders):,} '
            "folders; folders.csv has every one.</p>"
        )
    parts.append(_table(FOLDER_FIELDS, folders[:FOLDERS_SHOWN], ("unit", "folder")) + "</section>")
    parts.append('<section id="metadata"><h2>Metadata completeness</h2>')
    parts.append(_table(METADATA_FIELDS, report.metadata_rows(), ("unit",)) + "</section>")
    parts.append(f'<section id="clusters"><h2>Clusters ({len(report.clusters):,})</h2>')
    if len(report.clusters) > CLUSTERS_SHOWN:
        parts.append(
            f'<p class="muted" id="clusters-capped">The {CLUSTERS_SHOWN} largest of '
            f"{len(report.clusters):,} clusters; clusters.csv has every one.</p>"
        )
    if not report.clusters:
        parts.append("<p>No duplicate clusters.</p>")
    cache: dict[str, str] = {}
    parts.extend(
        _cluster_html(report, store, cluster, cache) for cluster in report.clusters[:CLUSTERS_SHOWN]
    )
    parts.append("</section></body></html>")
    return "\n".join(parts)


def write_report(report: MigrationReport, store: IndexStore, directory: Path) -> list[Path]:
    """report.html, redundancy.svg, redundancy.png and the four CSVs into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    chart = redundancy_svg(report)
    written = []
    for name, fields, rows in (
        ("units.csv", UNIT_FIELDS, report.unit_rows()),
        ("folders.csv", FOLDER_FIELDS, report.folder_rows()),
        ("clusters.csv", CLUSTER_FIELDS, report.cluster_rows()),
        ("metadata.csv", METADATA_FIELDS, report.metadata_rows()),
    ):
        _write_csv(directory / name, fields, rows)
        written.append(directory / name)
    (directory / "redundancy.svg").write_text(chart + "\n", encoding="utf-8")
    redundancy_png(report, directory / "redundancy.png")
    page = directory / "report.html"
    page.write_text(report_html(report, store, chart), encoding="utf-8")
    return [page, directory / "redundancy.svg", directory / "redundancy.png", *written]


def print_summary(report: MigrationReport, console: Console) -> None:
    table = Table(title="migration", title_justify="left")
    for column in ("unit", "assets", "copies", "to review", "redundancy", "reclaimable",
                   "complete metadata"):  # fmt: skip
        table.add_column(column, justify="left" if column == "unit" else "right")
    metadata = {row["unit"]: row for row in report.metadata_rows()}
    for row in report.unit_rows():
        table.add_row(
            row["unit"], str(row["assets"]), str(row["redundant_confirmed"]),
            str(row["redundant_to_review"]), f"{row['redundancy_pct']} %",
            _bytes(row["bytes_reclaimable"]), f"{metadata[row['unit']]['complete_pct']} %",
        )  # fmt: skip
    console.print(table)
    total = report.total
    console.print(
        f"{len(report.units)} units, {total.assets} assets, {len(total.clusters)} clusters, "
        f"{total.redundancy_pct} % redundant, {_bytes(total.bytes_reclaimable)} "
        f"({total.bytes_reclaimable:,} bytes) reclaimable",
        markup=False,
        highlight=False,
    )


# -- metadata audit -----------------------------------------------------------


@dataclass(frozen=True)
class AssetGap:
    unit: str
    asset_id: str
    url: str
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "asset_id": self.asset_id,
            "url": self.url,
            "missing": list(self.missing),
        }


@dataclass
class MetadataAudit:
    per_unit: dict[str, dict[str, int]]  # unit -> assets, missing_<field>, missing_any
    gaps: list[AssetGap]

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": [{"unit": unit, **counts} for unit, counts in self.per_unit.items()],
            "assets": [gap.as_dict() for gap in self.gaps],
        }


def audit_metadata(store: IndexStore, units: Sequence[str] | None = None) -> MetadataAudit:
    """Live assets missing location, date or department, per unit (every unit
    in the index, or `units`, in that order). Assets that could not be indexed
    count too: their metadata came with the listing."""
    wanted = list(units) if units else None
    per_unit: dict[str, dict[str, int]] = {}
    if wanted:
        for unit in wanted:
            per_unit[unit] = _empty_counts()
    gaps = []
    for asset in store.live_assets():
        if wanted is not None and asset.unit not in wanted:
            continue
        counts = per_unit.setdefault(asset.unit, _empty_counts())
        counts["assets"] += 1
        missing = missing_metadata(asset)
        for name in missing:
            counts[f"missing_{name}"] += 1
        if missing:
            counts["missing_any"] += 1
            gaps.append(AssetGap(asset.unit, asset.asset_id, asset.url, tuple(missing)))
    return MetadataAudit(per_unit, gaps)


def _empty_counts() -> dict[str, int]:
    return {"assets": 0, **{f"missing_{name}": 0 for name in MANDATORY_METADATA}, "missing_any": 0}


def write_audit_csv(audit: MetadataAudit, path: Path) -> int:
    rows = [
        {
            "unit": gap.unit,
            "asset_id": gap.asset_id,
            "url": gap.url,
            "missing": " ".join(gap.missing),
        }
        for gap in audit.gaps
    ]
    _write_csv(path, AUDIT_FIELDS, rows)
    return len(rows)


def print_audit(audit: MetadataAudit, console: Console) -> None:
    table = Table(title="assets missing mandatory metadata", title_justify="left")
    table.add_column("unit")
    for column in ("assets", "no location", "no date", "no department", "any missing",
                   "complete"):  # fmt: skip
        table.add_column(column, justify="right")
    for unit, counts in audit.per_unit.items():
        table.add_row(
            unit,
            str(counts["assets"]),
            *(str(counts[f"missing_{name}"]) for name in MANDATORY_METADATA),
            str(counts["missing_any"]),
            f"{_pct(counts['assets'] - counts['missing_any'], counts['assets'])} %",
        )
    console.print(table)
