"""Conformance statement: document model, Markdown and HTML rendering, CLI."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.config import Settings
from dicomnode.conformance import (
    Bullets,
    Section,
    Statement,
    Table,
    build_statement,
    render_html,
    render_markdown,
    scp_presentation_contexts,
    scu_presentation_contexts,
)

VERIFICATION = "1.2.840.10008.1.1"


def _sample() -> Statement:
    return Statement(
        title="T <1>",
        sections=(
            Section(
                "First & only",
                (
                    "a <b> paragraph",
                    Bullets(("one", "two | three")),
                    Table(("A", "B|C"), (("x|y", "<z>"),), caption="Cap"),
                ),
            ),
            Section("Sub", ("text",), level=3),
        ),
    )


def test_table_rejects_rows_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="cells"):
        Table(("a", "b"), (("only one",),))


def test_markdown_structure_and_escaping() -> None:
    md = render_markdown(_sample())
    lines = md.splitlines()
    assert lines[0] == "# T <1>"
    assert "## First & only" in lines and "### Sub" in lines
    assert "- two | three" in lines
    assert "**Cap**" in lines
    header = lines.index("**Cap**") + 2
    assert lines[header] == "| A | B\\|C |"
    assert lines[header + 1] == "|---|---|"
    assert lines[header + 2] == "| x\\|y | <z> |"
    assert md.endswith("text\n")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_well_formed_and_escaped() -> None:
    page = render_html(_sample())
    assert page.startswith("<!DOCTYPE html>")
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.open == []
    assert parser.tags.count("h1") == 1 and "h2" in parser.tags and "h3" in parser.tags
    assert parser.tags.count("table") == 1 and parser.tags.count("td") == 2 and "caption" in parser.tags
    assert "<b>" not in page and "a &lt;b&gt; paragraph" in page
    assert "a <b> paragraph" in parser.text  # unescaped back to the original text


def test_statement_lists_what_the_node_negotiates() -> None:
    from dicomnode.receiving.validation import STORAGE_SOP_CLASSES
    from dicomnode.sending.scu import RESULT_SOP_CLASSES

    settings = Settings()
    scp = {str(sop) for sop, _ in scp_presentation_contexts(settings)}
    assert scp == {str(s) for s in STORAGE_SOP_CLASSES} | {VERIFICATION}
    scu = scu_presentation_contexts()
    assert [str(sop) for sop, _ in scu] == [str(s) for s in RESULT_SOP_CLASSES]
    assert all(ts for _, ts in scu), "every SCU SOP class has transfer syntaxes"


def test_statement_follows_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "dicom": {"ae_title": "MYNODE", "port": 4100, "allowed_calling_aets": ["PACS1", "PACS2"],
                      "acse_timeout_s": 12, "max_associations": 3},
            "destination": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 4242, "max_attempts": 5},
            "outputs": {"content_qualification": "PRODUCT"},
        }
    )
    md = render_markdown(build_statement(settings))
    assert "### AE MYNODE: Storage SCP and Verification SCP" in md
    assert "Listens on: 127.0.0.1 port 4100 (TCP)" in md
    assert "Calling AE titles accepted: PACS1, PACS2" in md
    assert "| ACSE timeout | dicom.acse_timeout_s | 12 s |" in md
    assert "Maximum simultaneous associations: 3" in md
    assert "Destination: ARCHIVE at 127.0.0.1:4242" in md
    assert "up to 5 attempts" in md
    assert "Content Qualification PRODUCT" in md
    assert "TLS: not configured" in md
    # Coded concepts come from dicomnode.outputs.codes, findings from the label table.
    assert "| PROBABILITY | 122157 | DCM | Probability |" in md
    assert "| pneumonia | 233604007 | SCT | Pneumonia | standard |" in md


@pytest.mark.slow  # builds a timm model (torch import)
def test_statement_lists_only_the_models_labels(tmp_path: Path) -> None:
    from tests.helpers import make_tiny_model

    manifest = make_tiny_model(tmp_path / "m", labels=("pneumonia", "odd finding"))
    md = render_markdown(build_statement(Settings.model_validate({"model": {"name": str(manifest)}})))
    rows = [line for line in md.splitlines() if line.startswith(("| pneumonia |", "| odd finding |"))]
    assert len(rows) == 2
    assert "private (99DCMNODE)" in rows[1]
    assert "| atelectasis |" not in md


def test_cli_writes_md_and_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_DICOM__AE_TITLE", "ENVNODE")
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    runner = CliRunner()
    md = runner.invoke(app, ["conformance"])
    assert md.exit_code == 0, md.output
    assert md.output.startswith("# DICOM Conformance Statement")
    assert "AE title: ENVNODE" in md.output
    out = tmp_path / "dcs.html"
    written = runner.invoke(app, ["conformance", "--format", "HTML", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "ENVNODE" in out.read_text(encoding="utf-8")
    bad = runner.invoke(app, ["conformance", "--format", "pdf"])
    assert bad.exit_code == 2


def test_statement_describes_tls_when_configured(tmp_path: Path) -> None:
    files = {}
    for name in ("node.crt", "node.key", "cas.pem"):
        files[name] = tmp_path / name
        files[name].write_text("placeholder\n")
    settings = Settings.model_validate(
        {
            "dicom": {
                "port": 11112,
                "tls_port": 2762,
                "tls_certificate": str(files["node.crt"]),
                "tls_private_key": str(files["node.key"]),
                "tls_ca_certificates": str(files["cas.pem"]),
            }
        }
    )
    md = render_markdown(build_statement(settings))
    assert "Listens on: 127.0.0.1 port 11112 (TCP), port 2762 (TLS)" in md
    assert "TLS: DICOM over TLS on port 2762" in md and "mutual authentication" in md
    assert "cas.pem" in md and str(tmp_path) not in md, "file names only, not host paths"
    assert "| TLS port | dicom.tls_port | 2762 |" in md
    assert "TLS: not configured" not in md


def test_statement_shows_the_nodes_own_implementation_identity() -> None:
    """The live SCP and SCU AEs carry dicomnode's identity, and the statement shows it."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    from dicomnode import __version__
    from dicomnode.receiving.scp import build_ae
    from dicomnode.sending.scu import build_scu_ae
    from dicomnode.uid import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, is_valid_uid

    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    assert IMPLEMENTATION_VERSION_NAME == f"DICOMNODE_{__version__}"[:16]
    assert 0 < len(IMPLEMENTATION_VERSION_NAME) <= 16
    settings = Settings()
    for ae in (build_ae(settings.dicom), build_scu_ae(settings.destination, "DICOMNODE")):
        assert ae.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert ae.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert ae.implementation_class_uid != PYNETDICOM_IMPLEMENTATION_UID
        assert ae.implementation_version_name != PYNETDICOM_IMPLEMENTATION_VERSION
    md = render_markdown(build_statement(settings))
    assert f"| Implementation Class UID | {IMPLEMENTATION_CLASS_UID} |" in md
    assert f"| Implementation Version Name | {IMPLEMENTATION_VERSION_NAME} |" in md
    assert PYNETDICOM_IMPLEMENTATION_UID not in md


def test_statement_lists_only_the_sop_classes_the_node_sends() -> None:
    """SCU: the heatmap SC and the Comprehensive SR, exactly what the live SCU AE proposes."""
    from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

    from dicomnode.sending.scu import build_scu_ae

    written = {SecondaryCaptureImageStorage, ComprehensiveSRStorage}
    proposed = {
        ctx.abstract_syntax
        for ctx in build_scu_ae(Settings().destination, "DICOMNODE").requested_contexts
    }
    assert proposed == written
    assert {sop for sop, _ in scu_presentation_contexts()} == written
    md = render_markdown(build_statement(Settings()))
    scu_rows = [line for line in md.splitlines() if line.endswith("| SCU |")]
    assert len(scu_rows) == 2, scu_rows
    for uid in ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22",
                "1.2.840.10008.5.1.4.1.1.88.59"):  # 3D SR, Enhanced SR, KOS: never written
        assert uid not in md
