"""Server-side TLS for the node's second DICOM port (PS3.15 B.9, BCP 195 profile).

Mutual authentication: the node presents ``tls_certificate`` and requires every
client to present a certificate issued by one of ``tls_ca_certificates``. TLS 1.2
is the minimum; TLS 1.2 cipher suites are limited to the ECDHE/DHE AES-GCM ones
of the BCP 195 profiles (TLS 1.3 suites are all acceptable). A client without a
certificate, with an untrusted one, or speaking plain DICOM fails the handshake.
"""

from __future__ import annotations

import ssl
from typing import Final

from dicomnode.config import DicomSettings
from dicomnode.errors import ConfigError

#: TLS 1.2 cipher suites of the BCP 195 (RFC 9325) profiles, OpenSSL names.
BCP195_TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)


def server_context(settings: DicomSettings) -> ssl.SSLContext:
    """Build the server context for ``settings.tls_port``.

    Args:
        settings: ``tls_certificate``, ``tls_private_key`` (PEM) and
            ``tls_ca_certificates`` (PEM bundle of trusted client CAs) must be set.

    Returns:
        A context requiring a client certificate, TLS >= 1.2, BCP 195 ciphers.

    Raises:
        ConfigError: a file is missing or cannot be loaded (bad PEM, key that does
            not match the certificate, ...).
    """
    if (
        settings.tls_certificate is None
        or settings.tls_private_key is None
        or settings.tls_ca_certificates is None
    ):
        raise ConfigError(
            "DICOM TLS needs tls_certificate, tls_private_key and tls_ca_certificates"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    try:
        context.load_cert_chain(certfile=settings.tls_certificate, keyfile=settings.tls_private_key)
        context.load_verify_locations(cafile=settings.tls_ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA file: {exc}") from exc
    return context
