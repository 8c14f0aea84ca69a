"""What `predict --statistics` and `--preview` write next to the segmentations.

Per case, as soon as its segmentation is written (in the writer thread of `predict_folder`, while the
network runs on the next case): OUTPUT/.statistics/CASE.json (`autoseg.statistics.CaseStatistics`)
and OUTPUT/previews/CASE.png (`autoseg.figures.write_preview`). At the end of the run,
`complete_case_reports` writes those still missing or older than their segmentation (cases skipped
because an earlier run without the option wrote them, an ensemble's averaged outputs, a run killed
between the two writes), then merges every case's statistics into OUTPUT/statistics.json and .csv,
and writes OUTPUT/index.html.

Why per-case files merged at the end: a resumed run, or the N jobs of `--part I/N` writing into one
folder, each add their own cases; each run's merge takes every case whose segmentation and statistics
are there, so the folder's statistics.json is complete once the last part has ended (run predict once
more with --statistics, every case skipped, to merge after parts that ended together).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from autoseg.artifacts import read_json, write_atomic, write_json
from autoseg.figures import write_preview
from autoseg.inference.folder import output_path_for
from autoseg.io import Geometry, read_image, read_segmentation
from autoseg.statistics import STATISTICS_CSV, STATISTICS_JSON, CaseStatistics, StatisticsTable, case_statistics

CASE_STATISTICS_FOLDER = ".statistics"  # OUTPUT/.statistics/CASE.json
PREVIEWS_FOLDER = "previews"  # OUTPUT/previews/CASE.png
INDEX_HTML = "index.html"


@dataclass(frozen=True)
class CaseReports:
    """Which reports predict writes per case, and what names them (from the model's plan)."""

    statistics: bool = False
    preview: bool = False
    label_names: dict[int, str] = field(default_factory=dict)  # foreground label value -> name
    channel_names: list[str] = field(default_factory=list)  # input channel names, in channel order
    pixel_spacing: tuple[float, float] | None = None  # (y, x) mm at which pictures are read

    @classmethod
    def for_model(cls, model, statistics: bool, preview: bool) -> "CaseReports":
        """The reports of a `TrainedModel`'s task: its plan's label and channel names."""
        plans = model.plans
        labels = {int(v): str(n) for v, n in plans.labels.items() if int(v) != 0}
        channels = [str(plans.modality[c]) for c in sorted(plans.modality, key=int)]
        return cls(statistics, preview, labels, channels, model.pixel_spacing)

    @property
    def wanted(self) -> bool:
        return self.statistics or self.preview


def case_report_files(output_folder: Path, case_id: str) -> tuple[Path, Path]:
    """(statistics JSON, preview PNG) of one case."""
    return (output_folder / CASE_STATISTICS_FOLDER / f"{case_id}.json",
            output_folder / PREVIEWS_FOLDER / f"{case_id}.png")


def report_writer(reports: CaseReports, output_folder: Path) -> Callable[[str, list[Path], np.ndarray, Geometry], None]:
    """The `after_case` hook of `predict_folder`: a case's reports from its segmentation in memory."""

    def write(case_id: str, input_files: list[Path], segmentation: np.ndarray, geometry: Geometry) -> None:
        write_case_reports(reports, output_folder, case_id, input_files, segmentation, geometry)

    return write


def write_case_reports(reports: CaseReports, output_folder: Path, case_id: str, input_files: list[Path],
                       segmentation: np.ndarray, geometry: Geometry) -> None:
    """One case's statistics and/or preview; the image is read again from `input_files` for its own
    intensities (the network saw normalized ones)."""
    image, _ = read_image(input_files, reports.pixel_spacing)
    statistics_file, preview_file = case_report_files(output_folder, case_id)
    if reports.statistics:
        statistics = case_statistics(case_id, segmentation, image, geometry, reports.label_names,
                                     reports.channel_names)
        write_json(statistics_file, statistics.to_json())
    if reports.preview:
        write_preview(segmentation, image, geometry, reports.label_names, preview_file, title=case_id)


def _out_of_date(report: Path, segmentation_file: Path) -> bool:
    return not report.is_file() or report.stat().st_mtime_ns < segmentation_file.stat().st_mtime_ns


def complete_case_reports(reports: CaseReports, output_folder: Path, cases: dict[str, list[Path]],
                          chosen: list[str], output_format: str = "nifti") -> dict[str, str]:
    """Write the reports of the `chosen` cases that are missing or older than their segmentation, then
    statistics.json/.csv and index.html over every case of `cases` with a segmentation in `output_folder`.
    Returns case id -> one-line error of the cases whose reports failed."""
    failures = {}
    for case_id in chosen:
        segmentation_file = output_path_for(output_folder, case_id, cases[case_id], output_format)
        wanted = [path for path, on in zip(case_report_files(output_folder, case_id),
                                            (reports.statistics, reports.preview)) if on]
        if not segmentation_file.is_file() or not any(_out_of_date(p, segmentation_file) for p in wanted):
            continue
        try:
            segmentation, geometry = read_segmentation(segmentation_file, reports.pixel_spacing)
            write_case_reports(reports, output_folder, case_id, cases[case_id], segmentation, geometry)
        except Exception as error:  # noqa: BLE001 - reported per case, the others go on
            failures[case_id] = f"{segmentation_file.name}: reports not written ({error})"
    written = {case_id: output_path_for(output_folder, case_id, files, output_format)
               for case_id, files in cases.items()}
    written = {case_id: path for case_id, path in written.items() if path.is_file()}
    table = None
    if reports.statistics:
        table = merged_statistics(reports, output_folder, written)
        table.save(output_folder)
    if reports.preview:
        write_index(output_folder, written, table)
    return failures


def merged_statistics(reports: CaseReports, output_folder: Path, written: dict[str, Path]) -> StatisticsTable:
    """Every written case's statistics that is as new as its segmentation, in case order."""
    cases = []
    for case_id, segmentation_file in sorted(written.items()):
        statistics_file, _ = case_report_files(output_folder, case_id)
        if not _out_of_date(statistics_file, segmentation_file):
            cases.append(CaseStatistics.from_json(read_json(statistics_file)))
    return StatisticsTable({str(v): n for v, n in reports.label_names.items()}, reports.channel_names, cases)


def write_index(output_folder: Path, written: dict[str, Path], table: StatisticsTable | None) -> Path:
    """index.html: per case its preview (linked), a link to its segmentation and, with statistics, a table
    of its labels' voxels, volume and mean intensities."""
    by_case = {case.case_id: case for case in table.cases} if table is not None else {}
    sections = []
    for case_id, segmentation_file in sorted(written.items()):
        _, preview_file = case_report_files(output_folder, case_id)
        name = html.escape(case_id)
        parts = [f'<section id="{name}"><h2>{name}</h2>',
                 f'<p><a href="{html.escape(segmentation_file.name)}">{html.escape(segmentation_file.name)}</a></p>']
        if preview_file.is_file():
            link = f"{PREVIEWS_FOLDER}/{html.escape(preview_file.name)}"
            parts.append(f'<a href="{link}"><img src="{link}" alt="preview of {name}"></a>')
        if case_id in by_case:
            parts.append(_statistics_table(by_case[case_id], table.channel_names))
        sections.append("\n".join(parts) + "</section>")
    links = " ".join(f'<a href="#{html.escape(c)}">{html.escape(c)}</a>' for c in sorted(written))
    statistics_links = (f'<p><a href="{STATISTICS_JSON}">{STATISTICS_JSON}</a> '
                        f'<a href="{STATISTICS_CSV}">{STATISTICS_CSV}</a></p>') if table is not None else ""
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>autoseg predictions</title>\n"
            f"<style>{_STYLE}</style></head><body>\n<h1>{len(written)} cases</h1>\n<nav>{links}</nav>\n"
            f"{statistics_links}\n" + "\n".join(sections) + "\n</body></html>\n")
    return write_atomic(output_folder / INDEX_HTML, lambda tmp: Path(tmp).write_text(page))


_STYLE = ("body{font-family:sans-serif;margin:1em} img{max-width:100%} table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} nav a{margin-right:.5em}")


def _statistics_table(case: CaseStatistics, channel_names: list[str]) -> str:
    header = "".join(f"<th>{html.escape(c)} mean</th>" for c in channel_names)
    rows = []
    for entry in case.labels:
        size = entry.volume_ml if entry.volume_ml is not None else entry.area_mm2
        means = "".join(f"<td>{_number(entry.intensity.get(c, {}).get('mean'))}</td>" for c in channel_names)
        rows.append(f"<tr><td>{entry.label}</td><td>{html.escape(entry.name)}</td><td>{entry.voxels}</td>"
                    f"<td>{_number(size)}</td>{means}</tr>")
    unit = "area mm²" if case.labels and case.labels[0].volume_ml is None else "volume ml"
    return (f"<table><tr><th>label</th><th>name</th><th>voxels</th><th>{unit}</th>{header}</tr>"
            + "".join(rows) + "</table>")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"

