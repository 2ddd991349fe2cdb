"""How results are shown. The results page of a test.py run, results/<run>/index.html: the Table 1 summary on top,
then one row per test image with the blurry input, the output and the ground truth (and the two dual-pixel views,
small), zoomed crops, the per-image PSNR/SSIM/MAE/LPIPS and the gain over the input, ordered by PSNR gain and
sortable by any column. Viewable offline: one HTML file, no scripts or fonts from elsewhere, 8-bit thumbnails in
page/ beside it. Also the Markdown tables of every summary.md (test.py, demo.py, ood_check.py, bench.py)."""

from __future__ import annotations

import html
import os

import cv2
import numpy as np

from dpdd import GROUPS, METRICS
from fileio import atomic_write_text
from images import quantize, read_image, to_float, write_image

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "mae": False, "lpips": False}
THUMB_WIDTH = 320     # the input / output / ground truth thumbnails
VIEW_WIDTH = 120      # the left and right views (dual input)
CROP_WIDTH = 160      # crops: a window of at most 160x120 source pixels (a quarter of each side at most), shown
CROP_HEIGHT = 120     # at least 160 px wide, enlarged by nearest neighbour


def thumbnail_names(name: str, dual: bool) -> dict[str, str]:
    """The page/ files of one scene, by role."""
    roles = ["input", "output", "target", "crop_input", "crop_output", "crop_target"]
    roles += ["left", "right"] if dual else []
    return {role: f"page/{name}_{role}.png" for role in roles}


def gain(row: dict, metric: str) -> float | None:
    """How much better the output is than the blurry input: positive is better for every metric."""
    out, inp = row.get(metric), row.get("input_" + metric)
    if out is None or inp is None:
        return None
    return out - inp if HIGHER_IS_BETTER[metric] else inp - out


# --------------------------------------------------------------------------------------------- Markdown

def format_metric(value, metric: str, signed: bool = False) -> str:
    """A metric as every table shows it: PSNR with 2 decimals, the others with 4; None is n/a."""
    if value is None:
        return "n/a"
    digits = 2 if metric == "psnr" else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, then one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table1_markdown(rows: list[list[str]], groups: dict) -> str:
    """Table 1's layout: one row per method (its name, then its cells for indoor / outdoor / combined x PSNR, SSIM,
    MAE, LPIPS), the groups' image counts from `groups` (groups it lacks are left out)."""
    header = ["Method"] + [f"{g.capitalize()} (n={groups[g]['count']}) {m.upper()}" for g in GROUPS if g in groups
                           for m in METRICS]
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------- thumbnails

def crop_box(blurry: np.ndarray, sharp: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the window where the blurry image differs most from the sharp one (mean |difference|): the
    crops of the results page and of demo.py's comparison picture, so both show the same window."""
    diff = np.abs(blurry.astype(np.float32) - sharp.astype(np.float32)).mean(axis=-1)
    local = cv2.boxFilter(diff, -1, (width, height), normalize=True, borderType=cv2.BORDER_CONSTANT)
    h, w = diff.shape
    local[:height // 2, :], local[h - (height - height // 2) + 1:, :] = -1, -1   # keep the window inside
    local[:, :width // 2], local[:, w - (width - width // 2) + 1:] = -1, -1
    cy, cx = np.unravel_index(int(np.argmax(local)), local.shape)
    x, y = int(np.clip(cx - width // 2, 0, w - width)), int(np.clip(cy - height // 2, 0, h - height))
    return x, y, width, height


def make_thumbnails(run_dir: str, rows: list[dict], scenes: dict, dual: bool, levels: tuple = (0, None)) -> None:
    """Write the 8-bit thumbnails and crops of every row's scene into run_dir/page/ (the 16-bit outputs stay
    in images/). The crop is where the blurry input differs most from the ground truth. levels: (black, white)
    of the dataset's files (dpdd.dataset_levels)."""
    for row in rows:
        scene = scenes[row["name"]]
        names = thumbnail_names(row["name"], dual)
        full = {"input": to_float(read_image(scene.source_path), *levels),
                "output": to_float(read_image(os.path.join(run_dir, "images", row["name"] + ".png"))),
                "target": to_float(read_image(scene.target_path), *levels)}
        h, w = full["target"].shape[:2]
        x, y, cw, ch = crop_box(full["input"], full["target"], max(8, min(CROP_WIDTH, w // 4)),
                                max(8, min(CROP_HEIGHT, h // 4)))
        zoom = max(1, CROP_WIDTH // cw)
        for role, img in full.items():
            small = _resize(img, THUMB_WIDTH)
            s = small.shape[1] / w
            small = np.ascontiguousarray(quantize(small, 8))
            cv2.rectangle(small, (int(x * s), int(y * s)), (int((x + cw) * s) - 1, int((y + ch) * s) - 1),
                          (255, 220, 0), 1)
            write_image(os.path.join(run_dir, names[role]), small)
            crop = cv2.resize(img[y:y + ch, x:x + cw], (cw * zoom, ch * zoom), interpolation=cv2.INTER_NEAREST)
            write_image(os.path.join(run_dir, names["crop_" + role]), crop, bits=8)
        if dual:
            for role, path in (("left", scene.left_path), ("right", scene.right_path)):
                view = to_float(read_image(path), *levels)
                write_image(os.path.join(run_dir, names[role]), _resize(view, VIEW_WIDTH), bits=8)


def _resize(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------- the page

def _summary_table(summary: dict) -> str:
    groups, paper, inputs = summary["groups"], summary["paper"], summary.get("input_groups")
    head = "".join(f"<th colspan=4>{g.capitalize()} (n={groups[g]['count']})</th>" for g in GROUPS)
    sub = "".join(f"<th>{m.upper()}</th>" for _ in GROUPS for m in METRICS)
    rows = [(f"{summary['model']} (paper)", [paper[g][i] for g in GROUPS for i in range(4)]),
            (f"{summary['model']} (ours)", [groups[g][m] for g in GROUPS for m in METRICS])]
    if inputs:
        rows.append(("Blurry input", [inputs[g][m] for g in GROUPS for m in METRICS]))
    body = "".join("<tr><th>" + html.escape(label) + "</th>" + "".join(
        f"<td>{format_metric(v, m)}</td>" for v, m in zip(values, METRICS * 3)) + "</tr>" for label, values in rows)
    return (f"<table class=summary><tr><th rowspan=2>Method</th>{head}</tr><tr>{sub}</tr>{body}</table>")


def inference_text(summary: dict) -> str:
    """How test.py ran the network: whole images or tiles, one pass or the self-ensemble's mean of several."""
    tiling = (f"tiles of {summary['tile']} px overlapping by {summary['tile_overlap']} px, seams blended"
              if summary.get("tile") else "whole image")
    scales = summary.get("scales", 1)
    pyramid = f", at {scales} sizes each half the last, merged (scales)" if scales > 1 else ""
    return f"{tiling}, {passes_text(summary.get('self_ensemble', 1))}{pyramid}"


def passes_text(passes: int) -> str:
    """'one pass', or what a self-ensemble of `passes` passes is."""
    return f"the mean of {passes} passes over flips of the input (self-ensemble)" if passes > 1 else "one pass"


def _notes(summary: dict) -> list[str]:
    run, lp = summary.get("run", {}), summary["lpips"]
    sha = f" (SHA-256 {run['weights_sha256']})" if run.get("weights_sha256") else ""
    notes = [f"Weights: {summary['weights']}{sha}",
             f"Backend: {run.get('backend', '?')} {run.get('backend_version', '')}, "
             f"precision {run.get('precision', '?')}, {inference_text(summary)}",
             f"LPIPS: {lp['status']}" + (f" ({lp['reason']})" if lp.get("reason") else ""),
             f"Indoor/outdoor labels: {summary['categories_note']}"]
    notes += summary.get("categories_disagreements", [])
    return notes + list(summary.get("protocol_notes", []))


def render_page(run_dir: str, rows: list[dict], summary: dict, dual: bool, page_path: str | None = None,
                links: dict | None = None) -> str:
    """Write the page (default run_dir/index.html; elsewhere, its links point into run_dir) and return its path.
    make_thumbnails must have run for these rows."""
    page_path = page_path or os.path.join(run_dir, "index.html")
    prefix = os.path.relpath(run_dir, os.path.dirname(os.path.abspath(page_path)))
    prefix = "" if prefix == "." else prefix + "/"

    def img(path: str, cls: str, alt: str) -> str:
        return f'<img class={cls} src="{html.escape(prefix + path)}" alt="{html.escape(alt)}" loading=lazy>'

    ordered = sorted(rows, key=lambda r: -(gain(r, "psnr") if gain(r, "psnr") is not None else -np.inf))
    trs = []
    for rank, r in enumerate(ordered, 1):
        t = thumbnail_names(r["name"], dual)
        data = " ".join([f'data-rank="{rank}"', f'data-name="{html.escape(r["name"])}"',
                         f'data-category="{html.escape(r["category"])}"']
                        + [f'data-{m}="{"" if r.get(m) is None else repr(float(r[m]))}"' for m in METRICS]
                        + [f'data-gain-{m}="{"" if gain(r, m) is None else repr(float(gain(r, m)))}"' for m in METRICS])
        cells = "".join(f"<td class=num>{format_metric(r.get(m), m)}<br>"
                        f"<span class=gain>{format_metric(gain(r, m), m, True)}</span></td>" for m in METRICS)
        views = (f"<div class=views>{img(t['left'], 'view', 'left view')}{img(t['right'], 'view', 'right view')}"
                 f"left / right views</div>" if dual else "")
        figures = "".join(f"<figure>{img(t[role], 'thumb', role)}<figcaption>{caption}</figcaption>"
                          f"{img(t['crop_' + role], 'crop', role + ' crop')}</figure>"
                          for role, caption in (("input", "blurry input"), ("output", "output"),
                                                ("target", "ground truth")))
        trs.append(f"<tr {data}><td>{rank}</td><td><b>{html.escape(r['name'])}</b><br>{html.escape(r['category'])}"
                   f"<br><a href=\"{html.escape(prefix + 'images/' + r['name'] + '.png')}\">16-bit output</a>"
                   f"</td>{cells}<td class=imgs>{views}{figures}</td></tr>")
    link_html = " · ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>'
                           for text, href in (links or {}).items())
    title = f"{summary['model']}: {os.path.basename(os.path.normpath(run_dir))}"
    head_cells = "".join(f'<th class=sortable data-key="{m}">{m.upper()}<br><span class=gain>gain</span></th>'
                         for m in METRICS)
    page = f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>
body {{ font: 14px sans-serif; margin: 1em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }}
table.summary td {{ text-align: right; }} .num {{ text-align: right; white-space: nowrap; }}
.gain {{ color: #07a; font-size: 90%; }} th.sortable {{ cursor: pointer; background: #eef; }}
figure {{ display: inline-block; margin: 0 4px; text-align: center; }} figcaption {{ font-size: 90%; }}
img.thumb {{ width: {THUMB_WIDTH}px; display: block; }} img.view {{ width: {VIEW_WIDTH}px; margin: 1px; }}
img.crop {{ display: block; image-rendering: pixelated; margin: 2px auto; }}
.views {{ display: inline-block; vertical-align: top; text-align: center; font-size: 90%; white-space: normal; }}
td.imgs {{ white-space: nowrap; }} img.view {{ display: block; }} figure {{ vertical-align: top; }}
</style></head><body>
<h1>{html.escape(summary['model'])} on {summary['images']} test images</h1>
{('<p>' + link_html + '</p>') if link_html else ''}
{_summary_table(summary)}
<p>PSNR and SSIM: higher is better; MAE and LPIPS: lower is better; per image on float outputs clamped to [0, 1],
then averaged. <span class=gain>Gain</span>: how much better the output is than the blurry input (positive is better
for every metric). Rows are ordered by PSNR gain; click a column to sort by its gain, again to reverse.
Thumbnails and crops are 8-bit; the crop (marked in yellow) is where the input differs most from the ground truth,
enlarged without interpolation.</p>
<ul>{''.join('<li>' + html.escape(n) + '</li>' for n in _notes(summary))}</ul>
<table id=images><thead><tr><th>#</th><th>Scene</th>{head_cells}
<th>input · output · ground truth, crops below</th></tr></thead>
<tbody>
{chr(10).join(trs)}
</tbody></table>
<script>
document.querySelectorAll("th.sortable").forEach(function (th) {{
  th.addEventListener("click", function () {{
    var key = "gain" + th.dataset.key[0].toUpperCase() + th.dataset.key.slice(1);
    var body = document.querySelector("#images tbody"), down = th.dataset.down !== "1";
    th.dataset.down = down ? "1" : "0";
    Array.from(body.rows).sort(function (a, b) {{
      var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
      x = isNaN(x) ? -Infinity : x; y = isNaN(y) ? -Infinity : y;
      return down ? y - x : x - y;
    }}).forEach(function (tr) {{ body.appendChild(tr); }});
  }});
}});
</script>
</body></html>
"""
    atomic_write_text(page_path, page)
    return page_path
