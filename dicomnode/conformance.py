"""Generate the node's DICOM Conformance Statement from its live configuration.

Nothing here is a copy of what the node does: the SCP presentation contexts are read
from the AE that :func:`dicomnode.receiving.scp.build_ae` builds for the same
settings (so they are exactly what the node negotiates), the SCU SOP classes from
:data:`dicomnode.sending.scu.RESULT_SOP_CLASSES`, the coded concepts from
:mod:`dicomnode.outputs.codes`, and AE titles, limits, timeouts and the allow-list
from :class:`~dicomnode.config.Settings`.

The statement is first built as a small document model (:class:`Statement` made of
:class:`Section` with paragraphs, bullet lists and :class:`Table`), then rendered to
Markdown (:func:`render_markdown`) or HTML (:func:`render_html`); both renderers see
the same content. The outline follows PS3.2 Annex A (overview, networking, media,
character sets, security, IOD contents).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from pydicom.sr.coding import Code
from pydicom.uid import UID, ComprehensiveSRStorage, SecondaryCaptureImageStorage

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.domain import NotAssessedReason

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.presentation import PresentationContext

logger = logging.getLogger(__name__)

__all__ = [
    "Bullets",
    "OutputFormat",
    "Section",
    "Statement",
    "Table",
    "build_statement",
    "generate",
    "render_html",
    "render_markdown",
    "scp_presentation_contexts",
    "scu_presentation_contexts",
]

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"


class OutputFormat(StrEnum):
    """Formats the statement can be rendered in."""

    MD = "md"
    HTML = "html"


@dataclass(frozen=True)
class Table:
    """A table: header cells and rows of plain-text cells (same length as the header)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str | None = None

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"row {row!r} has {len(row)} cells, the header {len(self.headers)}")


@dataclass(frozen=True)
class Bullets:
    """An unordered list of plain-text items."""

    items: tuple[str, ...]


Block = str | Table | Bullets


@dataclass(frozen=True)
class Section:
    """A titled section; ``level`` 2 is a top-level section, 3 a subsection, and so on."""

    title: str
    blocks: tuple[Block, ...] = ()
    level: int = 2


@dataclass(frozen=True)
class Statement:
    """The whole conformance statement."""

    title: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------
# What the node negotiates
# ---------------------------------------------------------------------------------------


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else "(unnamed)"


def _scp_ae(settings: Settings) -> AE:
    from dicomnode.receiving.scp import build_ae

    return build_ae(settings.dicom)


def scp_presentation_contexts(settings: Settings) -> list[tuple[UID, tuple[UID, ...]]]:
    """SOP classes the node accepts as SCP, each with its accepted transfer syntaxes.

    Read from the AE :func:`dicomnode.receiving.scp.build_ae` builds for these settings,
    in the order the AE holds them.
    """
    ae = _scp_ae(settings)
    return [
        (UID(ctx.abstract_syntax), tuple(UID(ts) for ts in ctx.transfer_syntax))
        for ctx in ae.supported_contexts
        if ctx.abstract_syntax is not None
    ]


def scu_presentation_contexts() -> list[tuple[UID, tuple[UID, ...]]]:
    """SOP classes the node proposes as Storage SCU when sending results, with transfer syntaxes.

    The SOP classes are :data:`dicomnode.sending.scu.RESULT_SOP_CLASSES`; the transfer
    syntaxes are those of the contexts the sending AE requests.
    """
    from dicomnode.sending import scu

    proposed: dict[str, tuple[UID, ...]] = {}
    for ctx in _scu_requested_contexts():
        if ctx.abstract_syntax is not None:
            proposed[str(ctx.abstract_syntax)] = tuple(UID(ts) for ts in ctx.transfer_syntax)
    return [(UID(sop), proposed.get(str(sop), ())) for sop in scu.RESULT_SOP_CLASSES]


def _scu_requested_contexts() -> list[PresentationContext]:
    """The presentation contexts the sending AE requests (the AE is built, never started)."""
    from dicomnode.config import DestinationSettings
    from dicomnode.sending import scu

    # Built by the same function that sends, so this statement cannot drift from it.
    ae = scu.build_scu_ae(DestinationSettings(), "DICOMNODE")
    return list(ae.requested_contexts)


def _implementation(settings: Settings) -> tuple[str, str]:
    ae = _scp_ae(settings)
    return str(ae.implementation_class_uid), str(ae.implementation_version_name or "")


def _finding_labels(settings: Settings) -> tuple[tuple[str, ...], str]:
    """The configured model's labels, or every NIH ChestX-ray14 label when it cannot be read."""
    from dicomnode.errors import DicomNodeError
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.outputs import codes

    try:
        loaded = resolve_manifest(settings.model.name)
    except DicomNodeError as exc:
        logger.info("model %r not resolved (%s): listing every known finding code", settings.model.name, exc)
        return codes.NIH_CHESTXRAY14_LABELS, (
            f"The configured model ({settings.model.name!r}) could not be read here, so every finding "
            "the node knows a code for is listed; a model reports only its own labels."
        )
    manifest = loaded.manifest
    return tuple(manifest.labels), (
        f"Findings reported by the configured model {manifest.name} {manifest.version} "
        f"({manifest.architecture})."
    )


# ---------------------------------------------------------------------------------------
# Building the document
# ---------------------------------------------------------------------------------------


def build_statement(settings: Settings) -> Statement:
    """Build the conformance statement for ``settings``.

    Args:
        settings: the node's merged settings (as ``serve`` would run with them).

    Returns:
        The statement as a document model, ready for :func:`render_markdown` or
        :func:`render_html`.
    """
    scp = scp_presentation_contexts(settings)
    scu = scu_presentation_contexts()
    impl_uid, impl_version = _implementation(settings)
    sections = [
        _overview(settings, scp, scu),
        *_networking(settings, scp, scu, impl_uid, impl_version),
        Section("Media Interchange", ("The node does not read or write DICOM media (no File-set / DICOMDIR).",)),
        _character_sets(),
        _security(settings),
        *_iod_contents(settings),
    ]
    return Statement(title=f"DICOM Conformance Statement: dicomnode {__version__}", sections=tuple(sections))


def _sop_rows(contexts: Sequence[tuple[UID, tuple[UID, ...]]], role: str) -> list[tuple[str, ...]]:
    return [(_uid_name(sop), str(sop), role) for sop, _ in contexts]


def _overview(
    settings: Settings, scp: Sequence[tuple[UID, tuple[UID, ...]]], scu: Sequence[tuple[UID, tuple[UID, ...]]]
) -> Section:
    rows = _sop_rows(scp, "SCP") + _sop_rows(scu, "SCU")
    return Section(
        "Overview",
        (
            ("dicomnode is a DICOM-native AI node for chest radiographs. A PACS, an archive such "
            "as Orthanc, or a modality sends chest studies to it with C-STORE; the node stores "
            "and queues them, waits until a study has been quiet for "
            f"{settings.scheduler.stable_after_s:g} s, runs a classifier on every usable image, "
            "and sends back one Grad-CAM heatmap Secondary Capture image per image and one "
            "Comprehensive SR (TID 1500 Imaging Measurement Report) per study to the configured "
            "destination with C-STORE."),
            ("Results are labelled as not for diagnostic use (Content Qualification "
            f"{settings.outputs.content_qualification}, Series Description "
            f"\"{settings.outputs.sr_series_description}\")."),
            "This statement was generated from the node's live configuration.",
            Table(("SOP Class", "UID", "Role"), tuple(rows), caption="Network services"),
        ),
    )


def _networking(
    settings: Settings,
    scp: Sequence[tuple[UID, tuple[UID, ...]]],
    scu: Sequence[tuple[UID, tuple[UID, ...]]],
    impl_uid: str,
    impl_version: str,
) -> list[Section]:
    dicom = settings.dicom
    destination = settings.destination
    calling = destination.calling_ae_title or dicom.ae_title
    where = (
        f"{destination.ae_title} at {destination.host}:{destination.port}"
        if destination.host is not None
        else "none configured: results stay in the node's outbox until a destination is set"
    )
    pdu = f"{dicom.maximum_pdu_size} bytes" if dicom.maximum_pdu_size else "unlimited"
    scp_sets = _transfer_syntax_sets(scp, prefix="R")
    scu_sets = _transfer_syntax_sets(scu, prefix="S")
    scp_contexts = _context_table(scp, scp_sets, "SCP", "Accepted presentation contexts")
    scu_contexts = _context_table(scu, scu_sets, "SCU", "Proposed presentation contexts")
    return [
        Section(
            "Networking",
            (
                ("Implementation model: one application entity receives (Storage SCP, Verification "
                "SCP) and, from the same process, sends results (Storage SCU). Received instances "
                "are written to disk and queued in a database before the C-STORE response is sent; "
                "inference runs later, in batches, never in the association."),
                Table(
                    ("Item", "Value"),
                    (
                        ("Implementation Class UID", impl_uid),
                        ("Implementation Version Name", impl_version),
                        ("Application Context Name", APPLICATION_CONTEXT_NAME),
                    ),
                    caption="Implementation identifying information",
                ),
            ),
        ),
        Section(
            f"AE {dicom.ae_title}: Storage SCP and Verification SCP",
            (
                Bullets(
                    (
                        f"AE title: {dicom.ae_title}",
                        f"Listens on: {dicom.bind_address} port {dicom.port} (TCP)"
                        + (f", port {dicom.tls_port} (TLS)" if dicom.tls_port is not None else ""),
                        f"Maximum simultaneous associations: {dicom.max_associations}",
                        f"Maximum PDU size received: {pdu}",
                        "Asynchronous operations window: not supported (1 outstanding operation)",
                        "Called AE title must match: " + ("yes" if dicom.require_called_ae_title else "no"),
                        "Calling AE titles accepted: "
                        + (", ".join(dicom.allowed_calling_aets) if dicom.allowed_calling_aets else "any"),
                    )
                ),
                ("Association acceptance: an association whose called AE title is not ours (when "
                "checked) or whose calling AE title is not on the allow-list (when one is set) is "
                "rejected (A-ASSOCIATE-RJ, permanent, reasons 7 and 3). Any proposed presentation "
                "context whose abstract syntax is not listed below is rejected (abstract syntax not "
                "supported), so storage of other SOP classes (CT, MR, MG, colour images, ...) fails "
                "at negotiation."),
                scp_contexts,
                *_transfer_syntax_tables(scp_sets),
                ("C-STORE SCP conformance: an instance is acknowledged only after the file and its "
                "queue entry are durably stored. Instances of accepted SOP classes that are not "
                "usable single-frame chest radiographs (other body parts, multi-frame, colour) are "
                "stored and acknowledged with Success but skipped for inference, so senders do not "
                "retry them. Re-sent instances are acknowledged with Success and stored once."),
                _store_status_table(),
                "Verification SCP: C-ECHO is answered with Success (0x0000).",
            ),
            level=3,
        ),
        Section(
            f"AE {calling}: Storage SCU (results)",
            (
                Bullets(
                    (
                        f"Calling AE title: {calling}",
                        f"Destination: {where}",
                        "One association per send round carries every result that is due.",
                        (f"Retries: up to {destination.max_attempts} attempts per object, first retry after "
                        f"{destination.retry_backoff_s:g} s, doubling up to {destination.retry_backoff_max_s:g} s; "
                        "then the object is marked FAILED with the peer's status (visible in `dicomnode status`)."),
                        ("A response of Success (0x0000) or Warning (0xBxxx) counts as delivered; any other "
                        "status, an association rejection, abort or timeout counts as a failed attempt."),
                    )
                ),
                scu_contexts,
                *_transfer_syntax_tables(scu_sets),
            ),
            level=3,
        ),
        Section(
            "Network interfaces and configuration",
            (
                ("TCP/IP (IPv4 and IPv6) as provided by the operating system; no other network "
                "protocols. By default the node listens on loopback only; set the bind address to "
                "listen on other interfaces."),
                Table(
                    ("Parameter", "Setting", "Value"),
                    (
                        ("Our AE title", "dicom.ae_title", dicom.ae_title),
                        ("Listening address", "dicom.bind_address", dicom.bind_address),
                        ("Listening port", "dicom.port", str(dicom.port)),
                        ("ACSE timeout", "dicom.acse_timeout_s", f"{dicom.acse_timeout_s:g} s"),
                        ("DIMSE timeout", "dicom.dimse_timeout_s", f"{dicom.dimse_timeout_s:g} s"),
                        ("Network (idle) timeout", "dicom.network_timeout_s", f"{dicom.network_timeout_s:g} s"),
                        ("Maximum PDU size", "dicom.maximum_pdu_size", pdu),
                        ("Maximum associations", "dicom.max_associations", str(dicom.max_associations)),
                        ("Maximum connections awaiting negotiation", "dicom.max_pending_connections",
                         str(dicom.max_pending_connections)),
                        ("Largest data set accepted", "dicom.max_dataset_bytes", f"{dicom.max_dataset_bytes} bytes"),
                        ("TLS port", "dicom.tls_port", str(dicom.tls_port) if dicom.tls_port else "(off)"),
                        ("Destination AE title", "destination.ae_title", destination.ae_title),
                        ("Destination host", "destination.host", destination.host or "(none)"),
                        ("Destination port", "destination.port", str(destination.port)),
                        ("SCU timeouts (connect, ACSE, DIMSE, network)", "destination.timeout_s",
                         f"{destination.timeout_s:g} s"),
                        ("Study quiet time before processing", "scheduler.stable_after_s",
                         f"{settings.scheduler.stable_after_s:g} s"),
                    ),
                    caption="Configurable parameters (values in effect)",
                ),
            ),
            level=3,
        ),
    ]


def _transfer_syntax_sets(
    contexts: Sequence[tuple[UID, tuple[UID, ...]]], *, prefix: str
) -> dict[tuple[UID, ...], str]:
    """Name each distinct transfer syntax list (``R1``, ``R2``, ...), in order of appearance."""
    sets: dict[tuple[UID, ...], str] = {}
    for _, syntaxes in contexts:
        if syntaxes not in sets:
            sets[syntaxes] = f"{prefix}{len(sets) + 1}"
    return sets


def _context_table(
    contexts: Sequence[tuple[UID, tuple[UID, ...]]], sets: dict[tuple[UID, ...], str], role: str, caption: str
) -> Table:
    return Table(
        ("Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Extended Negotiation"),
        tuple(
            (_uid_name(sop), str(sop), f"set {sets[syntaxes]}" if syntaxes else "(none)", role, "None")
            for sop, syntaxes in contexts
        ),
        caption=caption,
    )


def _transfer_syntax_tables(sets: dict[tuple[UID, ...], str]) -> list[Table]:
    return [
        Table(
            ("Transfer Syntax", "UID"),
            tuple((_uid_name(ts), str(ts)) for ts in syntaxes),
            caption=f"Transfer syntax set {name}",
        )
        for syntaxes, name in sets.items()
        if syntaxes
    ]


def _store_status_table() -> Table:
    """Every status of :class:`~dicomnode.receiving.statuses.Status`: all the node answers."""
    from dicomnode.receiving.statuses import Status

    return Table(
        ("Status", "Meaning", "Returned when"),
        tuple((status.hex, status.meaning, status.when) for status in Status),
        caption="C-STORE response statuses",
    )


def _character_sets() -> Section:
    return Section(
        "Support of Character Sets",
        (
            ("Received instances: any Specific Character Set (0008,0005) is accepted; the node "
            "uses only UIDs, code strings and numbers from received headers for its decisions."),
            ("Created instances: patient and study attributes are copied from the source images "
            "together with their Specific Character Set; text the node writes itself (series "
            "descriptions, code meanings, algorithm names) uses the default repertoire (ISO-IR 6, "
            "ASCII)."),
        ),
    )


def _tls_text(settings: Settings) -> str:
    dicom = settings.dicom
    if dicom.tls_port is None:
        return (
            "TLS: not configured (dicom.tls_port unset); associations use plain TCP. Run the node on "
            "a trusted network, or put a TLS tunnel (stunnel, a VPN) in front of it. Results are "
            "sent over plain TCP."
        )
    names = {
        "certificate": dicom.tls_certificate,
        "private key": dicom.tls_private_key,
        "trusted client CAs": dicom.tls_ca_certificates,
    }
    files = ", ".join(f"{what} {path.name}" for what, path in names.items() if path is not None)
    return (
        f"TLS: DICOM over TLS on port {dicom.tls_port} (Secure Transport Connection Profile, BCP 195) "
        f"with mutual authentication: a client must present a certificate issued by one of the "
        f"trusted CAs ({files}). Port {dicom.port} stays plain TCP. Results are sent over plain TCP."
    )


def _security(settings: Settings) -> Section:
    dicom = settings.dicom
    allow = ", ".join(dicom.allowed_calling_aets) if dicom.allowed_calling_aets else "not set (any calling AE)"
    return Section(
        "Security",
        (
            Bullets(
                (
                    f"Calling AE allow-list: {allow}.",
                    "Called AE title check: " + ("on" if dicom.require_called_ae_title else "off") + ".",
                    f"Listening address: {dicom.bind_address}"
                    + (" (loopback only)." if dicom.bind_address in ("127.0.0.1", "::1", "localhost") else "."),
                    _tls_text(settings),
                    (f"Resource limits: at most {dicom.max_associations} associations, "
                    f"{dicom.max_pending_connections} connections waiting for association negotiation, "
                    f"data sets of at most {dicom.max_dataset_bytes} bytes."),
                    "No user identity negotiation; AE titles are not authentication.",
                    "Logs never contain Patient Name, Patient ID, Birth Date or Accession Number.",
                )
            ),
        ),
    )


def _code_rows(items: Sequence[tuple[str, Code]]) -> tuple[tuple[str, ...], ...]:
    return tuple((use, c.value, c.scheme_designator, c.meaning) for use, c in items)


def _iod_contents(settings: Settings) -> list[Section]:
    from dicomnode.outputs import codes

    outputs = settings.outputs
    concepts = [
        (name, value)
        for name in codes.__all__
        if isinstance(value := getattr(codes, name, None), Code)
    ]
    labels, labels_note = _finding_labels(settings)
    finding_rows = []
    for label in labels:
        code = codes.label_to_code(label)
        kind = "standard" if codes.is_standard_label(label) else f"private ({codes.PRIVATE_SCHEME})"
        finding_rows.append((label, str(code.value), str(code.scheme_designator), str(code.meaning), kind))
    return [
        Section(
            "Created SOP Instances",
            (
                (f"Heatmap: {_uid_name(SecondaryCaptureImageStorage)} ({SecondaryCaptureImageStorage}), one per processed "
                f"image, RGB, in a new series of the source study (Series Number {outputs.sc_series_number}, "
                f"Series Description \"{outputs.sc_series_description}\"), referencing its source in the "
                "Source Image Sequence; Derivation Code: Grad-CAM."),
                (f"Findings report: {_uid_name(ComprehensiveSRStorage)} ({ComprehensiveSRStorage}), one per study "
                f"(Series Number {outputs.sr_series_number}, Series Description "
                f"\"{outputs.sr_series_description}\"), Content Qualification "
                f"{outputs.content_qualification}, Completion Flag COMPLETE, Verification Flag UNVERIFIED, "
                "Preliminary Flag PRELIMINARY."),
                f"Manufacturer: {outputs.manufacturer}"
                + (f"; Institution Name: {outputs.institution_name}" if outputs.institution_name else "")
                + ". Patient and study attributes are copied from the source images.",
            ),
        ),
        Section(
            "SR template: TID 1500 Imaging Measurement Report",
            (
                Bullets(
                    (
                        ("Root: CONTAINER Imaging Measurement Report (TID 1500) with Language, "
                        "Observer Context (Device observer: the model) and Procedure Reported."),
                        "Image Library (TID 1600): every source image and every heatmap.",
                        ("Imaging Measurements: one Measurement Group (TID 1501) per image of the study, with "
                        "Tracking Identifier and UID, Algorithm Identification (TID 4019: name, version, "
                        "parameters, family) and the source image (no unqualified Finding row). An assessed "
                        "image has per label a CODE <finding> = Present/Absent with NUM Probability (the "
                        "model's probability, 0 to 1), NUM Threshold Value and, when made, the heatmap as "
                        "best illustration of the finding; and, when the model declares an intended "
                        "population, CODE Intended population = Within/Outside/Unknown with a Comment. An "
                        "image not assessed has no finding, only CODE Not assessed reason (table below) "
                        "with a Comment."),
                        ("Qualitative Evaluations (study level): per finding Present (any assessed image "
                        "positive) or Absent (all assessed images negative), with Threshold Value and a "
                        "Comment. A study without an assessable image gets no SR (job SKIPPED)."),
                        ("An image that arrives after a study's results were produced yields a new SR "
                        "covering every image of the study, with the earlier SR in the Predecessor "
                        "Documents Sequence."),
                    )
                ),
                Table(("Reason (NotAssessedReason)", "Code Value", "Coding Scheme", "Code Meaning"),
                      tuple((reason.value, str(c.value), str(c.scheme_designator), str(c.meaning))
                            for reason in NotAssessedReason for c in (codes.not_assessed_code(reason),)),
                      caption="Reasons an image is not assessed"),
                Table(("Constant (dicomnode.outputs.codes)", "Code Value", "Coding Scheme", "Code Meaning"),
                      _code_rows(concepts), caption="Coded concepts written by the node"),
                ("Concept names that the templates themselves define (Finding, Tracking Identifier, "
                "Algorithm Name, Source of Measurement, ...) are written as TID 1500, 1501 and 4019 "
                "specify them."),
                labels_note,
                Table(("Model label", "Code Value", "Coding Scheme", "Code Meaning", "Kind"),
                      tuple(finding_rows), caption="Finding codes"),
                (f"Private codes use the coding scheme {codes.PRIVATE_SCHEME}, declared in the SR's Coding "
                "Scheme Identification Sequence when used."),
            ),
            level=3,
        ),
    ]


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(statement: Statement) -> str:
    """The statement as GitHub-flavoured Markdown (ATX headings, pipe tables)."""
    lines = [f"# {statement.title}", ""]
    for section in statement.sections:
        lines += ["#" * section.level + " " + section.title, ""]
        for block in section.blocks:
            if isinstance(block, Table):
                if block.caption:
                    lines += [f"**{block.caption}**", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                lines.append("|" + "|".join("---" for _ in block.headers) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_html(statement: Statement) -> str:
    """The statement as a standalone HTML5 page (escaped text, simple tags, no scripts)."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(statement.title)}</title>",
        ("<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
        "text-align:left;vertical-align:top}</style>"),
        "</head>",
        "<body>",
        f"<h1>{esc(statement.title)}</h1>",
    ]
    for section in statement.sections:
        level = min(max(section.level, 2), 6)
        out.append(f"<h{level}>{esc(section.title)}</h{level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("<table>")
                if block.caption:
                    out.append(f"<caption>{esc(block.caption)}</caption>")
                out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.headers) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows]
                out.append("</table>")
            elif isinstance(block, Bullets):
                out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
            else:
                out.append(f"<p>{esc(block)}</p>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def generate(settings: Settings, output_format: OutputFormat | str = OutputFormat.MD) -> str:
    """Build and render the statement.

    Args:
        settings: the node's merged settings.
        output_format: ``"md"`` or ``"html"``.

    Raises:
        ValueError: an unknown format.
    """
    fmt = OutputFormat(output_format)
    statement = build_statement(settings)
    return render_html(statement) if fmt is OutputFormat.HTML else render_markdown(statement)
