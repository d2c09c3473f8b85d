"""`wvm report` (pipelines/report.py): the QC report of labels directories, run through the CLI
on real labels, its numbers checked against numbers computed here from the labels' own Parquet
files, and its pictures against what they promise to show."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, rewrite_episode_table
from pipelines.engines.base import LocalEngine
from pipelines.inference import ModelSpec
from pipelines.relabel import RelabelConfig, run_relabel
from schemas import labels as spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 110  # pipelines/report.py saves every plot at this resolution
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]  # matplotlib's first line colours


def relabel(src: Path, dst: Path, checkpoint: Path | None = None):
    config = RelabelConfig(source=str(src), dst=str(dst), model=ModelSpec(checkpoint=str(checkpoint) if checkpoint else None), on_error="skip")
    return run_relabel(config, LocalEngine(), progress=False)


class Tables(HTMLParser):
    """The report page's tables, each under the <h2> heading before it: {heading: [rows]}."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._heading, self._cell, self._rows = {}, [], None, None, None
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append((self._heading, dict(attrs)["src"]))

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th"):
            self._rows[-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            header, *rows = self._rows
            self.tables[self._heading] = [dict(zip(header, row)) for row in rows]
            self._rows = None

    def handle_data(self, data):
        if self._in_h2:
            self._heading += data
        elif self._cell is not None:
            self._cell += data


def version_tables(labels: Path, key: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(episodes, frames, failures) of one model version, read straight from its files."""
    version = labels / spec.VERSIONS_DIR / key
    failures = version / "failures.parquet"
    return (
        pq.read_table(version / spec.EPISODES_FILE).to_pandas(),
        pq.read_table(version / spec.FRAMES_DIR).to_pandas(),
        pq.read_table(failures).to_pandas() if failures.exists() else pd.DataFrame(),
    )


def png(path: Path) -> np.ndarray:
    """The picture's RGB pixels, after checking it is a complete, decodable PNG of some weight."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5_000, path
    with Image.open(path) as image:
        image.verify()  # checksums and structure
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def tinted(pixels: np.ndarray, colour: str, min_alpha: float = 0.3, tolerance: float = 8.0) -> int:
    """How many pixels show `colour` drawn over the white background with some opacity (alpha
    blending and anti-aliasing keep the hue): white minus the pixel is a multiple of white minus
    the colour."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
    direction = 255.0 - rgb
    fade = 255.0 - pixels.reshape(-1, 3).astype(float)
    alpha = fade @ direction / (direction @ direction)
    residual = np.linalg.norm(fade - alpha[:, None] * direction, axis=1)
    return int(((alpha >= min_alpha) & (alpha <= 1.02) & (residual <= tolerance)).sum())


@pytest.mark.slow  # three relabels with the in-process model (~40 s here)
def test_report_numbers_match_the_labels_and_its_plots_are_real(metaworld_copy, g1_small, other_checkpoint, tmp_path):
    # metaworld_mini with one bad episode (timestamps between two video frames: a relabel failure)
    def shift(table):
        ts = table["timestamp"].to_numpy() + 0.013
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(ts, pa.float32()))

    rewrite_episode_table(metaworld_copy, 5, shift)
    mw, g1 = tmp_path / "mw_labels", tmp_path / "g1_labels"
    assert relabel(metaworld_copy, mw).failed == 1
    # the G1 humanoid (out of the model's distribution: untrusted), labelled by two model versions
    first = relabel(g1_small, g1)
    second = relabel(g1_small, g1, other_checkpoint)
    assert first.model_key != second.model_key

    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "wvm.cli", "report", str(mw), f"{g1}/", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)

    # -- the numbers, computed here from the published versions' Parquet files --------------
    latest = {name: json.loads((labels / spec.LATEST_POINTER).read_text())["model_key"] for name, labels in (("mw_labels", mw), ("g1_labels", g1))}
    assert latest["g1_labels"] == second.model_key  # the newest version is the one reported
    assert summary["versions"] == latest
    mw_episodes, mw_frames, mw_failures = version_tables(mw, latest["mw_labels"])
    g1_episodes, g1_frames, g1_failures = version_tables(g1, latest["g1_labels"])
    g1_before, _, _ = version_tables(g1, first.model_key)
    episodes = pd.concat([mw_episodes, g1_episodes], ignore_index=True)
    frames = pd.concat([mw_frames, g1_frames], ignore_index=True)

    assert summary["episodes"] == len(episodes) == 17 + 8
    source_rows = pq.read_table(metaworld_copy / "data/chunk-000/file-000.parquet").column("episode_index").to_numpy()
    assert summary["frames"] == len(frames) == int((source_rows != 5).sum()) + 8 * 24  # every frame but episode 5's
    assert summary["mean_quality"] == pytest.approx(float(episodes["quality"].astype(float).mean()), abs=1e-6)
    assert summary["untrusted"] == int((~episodes["trusted"]).sum()) == 8  # the G1 episodes, and only they
    assert summary["failures"] == len(mw_failures) + len(g1_failures) == 1
    judged_failed = int((episodes["success_probability"].astype(float) < spec.JUDGED_FAILED_BELOW).sum())
    assert summary["judged_failed"] == judged_failed
    merged = g1_episodes.merge(g1_before, on="episode_id", suffixes=("", "_before"))
    assert summary["change"]["episodes_compared"] == len(merged) == 8
    delta = (merged["quality"].astype(float) - merged["quality_before"].astype(float)).mean()
    assert summary["change"]["mean_quality_delta"] == pytest.approx(delta, abs=1e-6) and delta != 0
    assert json.loads((out / "report.json").read_text()) == {k: v for k, v in summary.items() if k != "html"}
    assert Path(summary["html"]) == out / "report.html"

    # -- the page: the same numbers, the tables, the pictures it shows -----------------------
    page = (out / "report.html").read_text()
    assert f"<p>{len(episodes)} episodes, {len(frames)} frames, mean quality {round(summary['mean_quality'], 3)}, {judged_failed} judged failed by the model (success probability under {spec.JUDGED_FAILED_BELOW}), 1 failures, 8 episodes flagged untrusted." in page
    parsed = Tables()
    parsed.feed(page)
    tables = parsed.tables

    counts = tables["Episodes per embodiment and task"]
    frames = frames.merge(episodes[["episode_id", "embodiment", "task"]], on="episode_id")
    expected = {
        (embodiment, task): (str(group["episode_id"].nunique()), str(len(group)),
                             f"{(ours := episodes[(episodes.embodiment == embodiment) & (episodes.task == task)])['quality'].astype(float).mean():.3f}",
                             str(int((ours["success_probability"].astype(float) < spec.JUDGED_FAILED_BELOW).sum())))
        for (embodiment, task), group in frames.groupby(["embodiment", "task"])
    }  # fmt: skip
    assert {(r["embodiment"], r["task"]): (r["episodes"], r["frames"], r["mean_quality"], r["judged_failed"]) for r in counts} == expected
    assert len(expected) == 4  # three Meta-World tasks and the G1 task

    (failure,) = tables["Failures"]
    assert (failure["source"], failure["phase"], failure["source_episode_index"]) == ("mw_labels", "relabel", "5")
    assert failure["file"] == mw_failures["file"].iloc[0] and "timestamps do not match the video" in failure["reason"]

    (untrusted_heading,) = [h for h in tables if h.startswith("Labels not to trust")]
    untrusted = tables[untrusted_heading]
    assert untrusted_heading.startswith("Labels not to trust: 8 episodes")
    assert sorted(int(r["episode_index"]) for r in untrusted) == list(range(8)) and {r["source"] for r in untrusted} == {"g1_labels"}
    ood = [float(r["ood_score"]) for r in untrusted]
    assert ood == sorted(ood, reverse=True) and min(ood) > spec.OOD_TRUST_LIMIT  # most unfamiliar first

    changes = tables["Largest quality changes against the previous model"]
    assert len(changes) == 8 and {r["previous_version"] for r in changes} == {first.model_key}
    for row in changes:
        before = g1_before.set_index("episode_index").loc[int(row["episode_index"]), "quality"]
        now = g1_episodes.set_index("episode_index").loc[int(row["episode_index"]), "quality"]
        assert (row["quality_before"], row["quality"], row["delta"]) == (f"{before:.3f}", f"{now:.3f}", f"{now - before:.3f}")

    # -- the pictures: every one the page shows exists, is a real PNG and shows its data -----
    promised = {
        "Episode quality": ("plots/quality_histogram.png", (6, 3.2)),
        "Progress of the best and worst episodes": ("plots/best_and_worst.png", (6, 3.2)),
        "Change against the previous model version": ("plots/model_change.png", (3.6, 3.4)),
    }
    assert dict(parsed.images) == {caption: path for caption, (path, _) in promised.items()}
    pictures = {}
    for caption, (path, (w, h)) in promised.items():
        pixels = pictures[caption] = png(out / path)
        assert pixels.shape == (round(h * DPI), round(w * DPI), 3), caption
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, caption  # drawn, not blank
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(Path(p).name for p, _ in promised.values())
    # the histogram: one bar colour per source, nothing else
    histogram = pictures["Episode quality"]
    assert all(tinted(histogram, c) > 200 for c in TAB10[:2]) and tinted(histogram, TAB10[2]) == 0
    # the best and worst 2 episodes of each source: 8 curves in matplotlib's first 8 line colours
    # (the 8th, grey, cannot be told from the axes' anti-aliased text), and no 9th
    curves = pictures["Progress of the best and worst episodes"]
    assert all(tinted(curves, c) > 100 for c in TAB10[:7]) and tinted(curves, "#bcbd22") == 0
    # one dot per compared episode, all in the first colour
    change = pictures["Change against the previous model version"]
    assert tinted(change, TAB10[0]) > 40 and tinted(change, TAB10[1]) == 0  # dots may overlap
