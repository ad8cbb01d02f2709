"""The report as PDF (pure builder, ReportLab).

Same content as the HTML page: header with the institution, patient and study, sections with
the coded findings, key images, addenda, the signature block (who, when, hashes) and the
version history. Text is XML-escaped before it reaches ReportLab's paragraph markup. A Unicode
TrueType font (DejaVu Sans where installed, else ReportLab's bundled Vera) is embedded so that
names and texts outside Latin-1 print as far as the font covers them.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Flowable,
    Image,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from telerad.worklist.report_html import STATUS_LABELS, format_time
from telerad.worklist.report_view import (
    KeyImage,
    ReportBundle,
    ReportVersion,
    field_rows,
    format_dicom_date,
    format_person_name,
)
from telerad.worklist.templates import SECTIONS

_FONT = "TeleradSans"
_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path(reportlab.__file__).parent / "fonts" / "Vera.ttf",
)
_CJK_FONT = "STSong-Light"
#: CJK punctuation, kana, unified ideographs (incl. extension A), compatibility ideographs and
#: full-width forms.
_CJK_RUN = re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]+")
_font_lock = threading.Lock()
_IMAGE_WIDTH = 80 * mm


def _font() -> str:
    """Register the Unicode font once (ReportLab's registry is process-wide)."""
    with _font_lock:
        if _FONT not in pdfmetrics.getRegisteredFontNames():
            path = next(p for p in _FONT_CANDIDATES if p.is_file())
            pdfmetrics.registerFont(TTFont(_FONT, str(path)))
    return _FONT


def _styles() -> dict[str, ParagraphStyle]:
    font = _font()
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontName=font),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontName=font),
        "body": ParagraphStyle("body", parent=base["BodyText"], fontName=font),
        "small": ParagraphStyle("small", parent=base["BodyText"], fontName=font, fontSize=7),
        "critical": ParagraphStyle(
            "critical", parent=base["BodyText"], fontName=font, textColor=colors.red
        ),
    }


def _text(value: str) -> str:
    """Escaped paragraph markup keeping line breaks; runs of Chinese/Japanese characters are
    set in ReportLab's built-in CID font (the TrueType fonts have no CJK glyphs: a patient
    named 王 would print as empty boxes)."""
    markup = escape(value).replace("\n", "<br/>")
    if _CJK_RUN.search(markup) is None:
        return markup
    font = _cjk_font()
    return _CJK_RUN.sub(lambda run: f'<font name="{font}">{run.group(0)}</font>', markup)


def _cjk_font() -> str:
    """Register the CJK CID font once (Adobe's STSong-Light, Unicode; needs no font file)."""
    with _font_lock:
        if _CJK_FONT not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(UnicodeCIDFont(_CJK_FONT))
    return _CJK_FONT


def render_report_pdf(bundle: ReportBundle) -> bytes:
    """The report as a PDF document (bytes)."""
    styles = _styles()
    version = bundle.version
    story: list[Flowable] = [
        Paragraph(_text(bundle.institution), styles["body"]),
        Paragraph(_text(version.template.title.meaning), styles["title"]),
        Paragraph(
            _text(
                f"{STATUS_LABELS[version.fhir_status]} — report {version.id}, "
                f"version {version.sequence}"
            ),
            styles["body"],
        ),
        _patient_table(bundle, styles),
        Spacer(1, 4 * mm),
    ]
    if version.critical:
        findings = ", ".join(version.critical_findings)
        label = f"Critical finding: {findings}" if findings else "Critical finding"
        story.append(Paragraph(_text(label), styles["critical"]))
    story += _sections(version, styles)
    story += _key_images(bundle.key_images, styles)
    story += _addenda(bundle, styles)
    story += _signature(version, styles)
    story += _history(bundle, styles)
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=f"{version.template.title.meaning} {version.id}",
        author=bundle.institution,
        invariant=1,
    )
    document.build(story)
    return buffer.getvalue()


def _patient_table(bundle: ReportBundle, styles: dict[str, ParagraphStyle]) -> Table:
    study = bundle.study
    patient_id = study.patient_id + (
        f" ({study.issuer_of_patient_id})" if study.issuer_of_patient_id else ""
    )
    rows = [
        ("Patient", format_person_name(study.patient_name)),
        ("Patient ID", patient_id),
        ("Birth date / sex", f"{format_dicom_date(study.birth_date)} {study.sex}"),
        ("Study", study.study_description),
        ("Study date", format_dicom_date(study.study_date)),
        ("Accession", study.accession_number),
        ("Referring", format_person_name(study.referring_physician)),
        ("Study UID", study.study_uid),
    ]
    return _table(
        [
            [Paragraph(_text(a), styles["body"]), Paragraph(_text(b), styles["body"])]
            for a, b in rows
        ],
        [35 * mm, 130 * mm],
    )


def _table(rows: Sequence[Sequence[Flowable]], widths: list[float]) -> Table:
    table = Table([list(row) for row in rows], colWidths=widths)
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ]
        )
    )
    return table


def _sections(version: ReportVersion, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    story: list[Flowable] = []
    for section in SECTIONS:
        text = version.content.sections.get(section.key, "")
        rows = field_rows(version) if section.key == "findings" else []
        if not text and not rows:
            continue
        story.append(Paragraph(_text(section.label), styles["h2"]))
        if text:
            story.append(Paragraph(_text(text), styles["body"]))
        if rows:
            cells = [
                [
                    Paragraph(_text(row.label), styles["critical" if row.critical else "body"]),
                    Paragraph(_text(row.value), styles["body"]),
                    Paragraph(_text(row.code), styles["small"]),
                ]
                for row in rows
            ]
            story.append(_table(cells, [50 * mm, 35 * mm, 80 * mm]))
    return story


def _key_images(images: tuple[KeyImage, ...], styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    if not images:
        return []
    story: list[Flowable] = [Paragraph("Key images", styles["h2"])]
    for image in images:
        reader = ImageReader(io.BytesIO(image.data))
        width, height = reader.getSize()
        scale = _IMAGE_WIDTH / max(width, 1)
        story.append(Image(io.BytesIO(image.data), width=_IMAGE_WIDTH, height=height * scale))
        caption = f"{image.sop_instance_uid} frame {image.frame}"
        story.append(Paragraph(_text(caption), styles["small"]))
    return story


def _addenda(bundle: ReportBundle, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    story: list[Flowable] = []
    for item in bundle.chain:
        if item.sequence > bundle.version.sequence or not item.content.addendum:
            continue
        if not story:
            story.append(Paragraph("Addenda", styles["h2"]))
        signed = "not signed"
        if item.signature:
            who = item.signature.signer or item.signature.signer_username
            signed = f"{who}, {format_time(item.signature.signed_at)}"
        story.append(Paragraph(_text(f"Addendum {item.sequence} — {signed}"), styles["body"]))
        story.append(Paragraph(_text(item.content.addendum), styles["body"]))
    return story


def _signature(version: ReportVersion, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("Signature", styles["h2"])]
    signature = version.signature
    if signature is None:
        author = version.author or version.author_username
        label = STATUS_LABELS[version.fhir_status]
        story.append(Paragraph(_text(f"Not signed ({label}). Author: {author}"), styles["body"]))
        return story
    who = signature.signer or signature.signer_username
    lines = [
        f"Signed by {who} ({signature.signer_username}) on {format_time(signature.signed_at)}",
        f"Content SHA-256: {signature.content_sha256}",
        f"Record SHA-256: {signature.record_sha256}",
    ]
    story += [Paragraph(_text(line), styles["small"]) for line in lines]
    return story


def _history(bundle: ReportBundle, styles: dict[str, ParagraphStyle]) -> list[Flowable]:
    story: list[Flowable] = [Paragraph("History", styles["h2"])]
    for item in bundle.chain:
        line = f"Version {item.sequence} ({item.kind.value}): {item.status.value}"
        if item.signature:
            line += f", signed {format_time(item.signature.signed_at)}"
            line += f", record {item.signature.record_sha256}"
        story.append(Paragraph(_text(line), styles["small"]))
    return story
