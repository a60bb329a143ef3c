"""The TLS context for the link to ZooKeeper: whom we trust, and who we are.

kazoo's own context loads the system's CA store before ``ca`` and, unless
told otherwise, checks no host name, so any certificate from any publicly
trusted CA would pass for our ensemble.  Ours trusts ``ca`` alone when it is
set (the system store otherwise) and checks the server's name by default.
"""

from __future__ import annotations

import ssl

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from .config import TLSSettings

# OpenSSL's verify codes for a certificate that names another host or address.
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class TLSSetupError(ValueError):
    """A TLS file that cannot be used; ``key`` is the config key that names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def client_context(settings: TLSSettings) -> ssl.SSLContext:
    """A client context for ``settings``; raises TLSSetupError naming the bad key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = settings.check_hostname
    if settings.ca:
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (OSError, ValueError) as exc:
            raise TLSSetupError("ca", f"cannot load CA certificates from {settings.ca}: "
                                f"{_reason(exc)}") from None
    else:
        # Honours SSL_CERT_FILE / SSL_CERT_DIR, as every OpenSSL client does.
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.certfile:
        _load_client_certificate(context, settings)
    return context


def _load_client_certificate(context: ssl.SSLContext, settings: TLSSettings) -> None:
    asked = []

    def password() -> str:
        # Without a callback OpenSSL would prompt on the terminal for an
        # encrypted key, and a listener has no one to answer.
        asked.append(True)
        if settings.keyfile_password is None:
            raise TLSSetupError("keyfile", f"{settings.keyfile} is encrypted and no "
                                "password for it is set")
        return settings.keyfile_password

    try:
        context.load_cert_chain(settings.certfile, settings.keyfile, password=password)
    except TLSSetupError:
        raise
    except (OSError, ValueError) as exc:
        reason = _reason(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSSetupError("keyfile", f"{settings.keyfile} is not the key of "
                                f"{settings.certfile}") from None
        if asked:
            raise TLSSetupError("keyfile_password",
                                f"does not decrypt {settings.keyfile}") from None
        raise TLSSetupError("certfile", f"cannot load {settings.certfile} with "
                            f"{settings.keyfile}: {reason}") from None


def refusal_reason(exc: ssl.SSLCertVerificationError, settings: TLSSettings) -> str:
    """Why the server's certificate was refused, as an operator would want it said."""
    message = (exc.verify_message or str(exc)).rstrip(".")
    trusted = settings.ca or "the system CA store"
    if exc.verify_code in _NAME_MISMATCH:
        return f"{message} (tls_check_hostname = true)"
    return f"{message} (trusting only {trusted})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc)
