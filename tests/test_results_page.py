"""The results page test.py writes (results_page.py): every referenced file exists, one row per test image, the
numbers are metrics.csv's, the gains are the output's minus the blurry input's metrics computed independently,
rows come ordered by PSNR gain, thumbnails are 8-bit while the outputs stay 16-bit."""

import csv
import os
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

import metrics
import results_page
from config import make_config
from evalkit import TINY, load_script, make_test_split, save_checkpoint, tiny_model
from images import read_image, to_float

T = load_script("test")


class Page(HTMLParser):
    """The images and links of a page, the image table's rows (their data- attributes and cell texts), and the
    summary table's cell texts."""

    def __init__(self):
        super().__init__()
        self.refs, self.rows, self.summary = [], [], []
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.refs.append(a["src"])
        if tag == "a":
            self.refs.append(a["href"])
        if tag == "table":
            self._table = a.get("id") or a.get("class")
        if tag == "tr" and self._table == "images" and "data-name" in a:
            self._row = {"attrs": a, "cells": []}
            self.rows.append(self._row)
        if tag == "tr" and self._table == "summary":
            self.summary.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join(t.strip() for t in self._cell if t.strip())
            if self._row is not None:
                self._row["cells"].append(text)
            elif self._table == "summary":
                self.summary[-1].append(text)
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None


@pytest.mark.parametrize("mode", ["dual", "single"])
def test_page_structure_numbers_and_files(tmp_path, mode):
    root = str(tmp_path / "ds")
    names = make_test_split(root, n=4, h=60, w=84)
    model, cfg = tiny_model(mode, seed=2)
    ckpt = save_checkpoint(model, cfg, str(tmp_path / "ck"))
    ecfg = make_config("single" if mode == "single" else "paper",
                       {**TINY, "dataset_root": root, "results_dir": str(tmp_path / "res")})
    summary = T.evaluate(ecfg, ckpt, lpips="random" if mode == "dual" else "off", progress=False)
    out = os.path.join(str(tmp_path / "res"), ecfg.run_name)
    page = Page()
    with open(os.path.join(out, "index.html")) as f:
        page.feed(f.read())
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}

    # every referenced file exists; thumbnails are 8-bit, the outputs stay 16-bit
    assert page.refs and all(os.path.isfile(os.path.join(out, ref)) for ref in page.refs)
    thumbs = [r for r in page.refs if r.startswith("page/")]
    assert len(thumbs) == 4 * (8 if mode == "dual" else 6)
    assert all(cv2.imread(os.path.join(out, r), cv2.IMREAD_UNCHANGED).dtype == np.uint8 for r in thumbs)
    assert read_image(os.path.join(out, "images", names[0] + ".png")).dtype == np.uint16

    # one row per image, numbers equal to metrics.csv, gains against an independent computation of the input's
    assert sorted(r["attrs"]["data-name"] for r in page.rows) == sorted(names) == sorted(csv_rows)
    lpips_on = mode == "dual"
    for row in page.rows:
        a, c = row["attrs"], csv_rows[row["attrs"]["data-name"]]
        scene = [s for s in T.dpdd.list_scenes(root, "test") if s.source == a["data-name"]][0]
        gt, blurry = to_float(read_image(scene.target_path)), to_float(read_image(scene.source_path))
        assert float(c["input_psnr"]) == metrics.psnr(gt, blurry) and float(c["input_mae"]) == metrics.mae(gt, blurry)
        for m in ("psnr", "ssim", "mae", "lpips"):
            if m == "lpips" and not lpips_on:
                assert a["data-lpips"] == c["lpips"] == c["input_lpips"] == ""
                continue
            assert a[f"data-{m}"] == c[m]                        # the repr metrics.csv holds
            better = float(c[m]) - float(c["input_" + m])
            assert float(a[f"data-gain-{m}"]) == pytest.approx(better if m in ("psnr", "ssim") else -better, abs=1e-12)
        shown = row["cells"][2]                                  # "PSNR +gain" in the PSNR column
        assert shown == f"{float(c['psnr']):.2f} {float(a['data-gain-psnr']):+.2f}"
    gains = [float(r["attrs"]["data-gain-psnr"]) for r in page.rows]
    assert gains == sorted(gains, reverse=True)
    assert [int(r["attrs"]["data-rank"]) for r in page.rows] == [1, 2, 3, 4]

    # the Table 1 summary on top: ours and the blurry input's combined means as summary.json has them
    by_label = {cells[0]: cells[1:] for cells in page.summary if cells}
    ours = by_label[f"{summary['model']} (ours)"]
    assert ours[8] == f"{summary['groups']['combined']['psnr']:.2f}"
    assert by_label["Blurry input"][8] == f"{summary['input_groups']['combined']['psnr']:.2f}"
    assert summary["input_groups"]["combined"]["psnr"] == pytest.approx(
        np.mean([float(c["input_psnr"]) for c in csv_rows.values()]), abs=1e-12)

    # a page written elsewhere (demo.py's results/demo/index.html) links into the run's folder
    rows, _ = T.read_rows(os.path.join(out, "metrics.csv"))
    elsewhere = results_page.render_page(out, rows, summary, mode == "dual", str(tmp_path / "index.html"),
                                         links={"other run": "single/index.html"})
    moved = Page()
    with open(elsewhere) as f:
        moved.feed(f.read())
    local = [r for r in moved.refs if r != "single/index.html"]
    assert len(local) == len(page.refs) and all(os.path.isfile(tmp_path / r) for r in local)
    assert all(r.startswith(os.path.relpath(out, str(tmp_path)) + "/") for r in local)
