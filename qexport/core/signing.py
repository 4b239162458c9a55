"""Signed handoff: OpenSSF Model Signing (``model-signing``) over every file of a folder or bundle.

A manifest proves that an artifact matches it, not who wrote either: whoever can replace the
artifact can rewrite its manifest too. A signature made with the builder's private key over every
file's sha256 (a Sigstore bundle with a DSSE envelope, written as ``model.sig`` in the folder)
closes that gap. ``qexport verify --public-key`` checks it **before** trusting any manifest.

The files are hashed exactly as the upstream ``model_signing`` command does (``model.sig`` and git
files ignored), so a deployment team can verify a bundle with that command alone. Keys never enter
a bundle, a log or a manifest: only their paths are used, and a key inside the folder being signed
is refused.
"""

from __future__ import annotations

import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qexport.core.errors import QExportError, first_line

SIGNATURE_FILE = "model.sig"
INSTALL = "pip install 'qexport[signing]' (model-signing==1.1.1 with pyopenssl, which it imports undeclared)"
UPSTREAM_VERSION = "1.1.1"


@dataclass(frozen=True)
class SigningKey:
    """A private key, and for certificate signing its certificate and the chain up to a root."""

    private_key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()

    @property
    def method(self) -> str:
        return "certificate" if self.certificate else "key"


@dataclass(frozen=True)
class TrustAnchor:
    """What a signature must verify against: the signer's public key, or a certificate chain."""

    public_key: Path | None = None
    certificate_chain: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.public_key) == bool(self.certificate_chain):
            raise QExportError("Give exactly one of --public-key or --certificate-chain to check a signature.")

    def describe(self) -> str:
        return f"public key {self.public_key.name}" if self.public_key else \
            f"certificate chain {', '.join(p.name for p in self.certificate_chain)}"


def _model_signing():
    try:
        import OpenSSL  # noqa: F401  model_signing imports it without declaring it
        import model_signing
    except ImportError as err:
        raise QExportError(f"{err.name or 'model-signing'} is not installed; {INSTALL}.") from err
    return model_signing


def _hashing_config(model_signing):
    """Every file but the signature and git's own files: the upstream command's defaults."""
    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=True)


def readable_file(path: Path, what: str) -> Path:
    """``path`` if it is a readable file; else one sentence naming it."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise QExportError(f"Cannot read {what} {path} ({err.strerror or err}); check the path and its permissions.") \
            from err
    return path


def private_key_warning(path: Path) -> str | None:
    """A warning when other users can read the private key (as ssh refuses such keys)."""
    mode = Path(path).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"warning: the private key {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                f"`chmod 600 {path}` keeps it yours.")
    return None


def check_key_outside(key: SigningKey, folder: Path) -> None:
    """A private key inside the folder being signed would be signed and shipped with it."""
    if Path(folder).resolve() in key.private_key.resolve().parents:
        raise QExportError(f"The private key {key.private_key} is inside {folder}, which is being signed and handed "
                           "over; move the key out of the folder.")


def sign_folder(folder: Path, key: SigningKey) -> Path:
    """Write ``folder/model.sig`` over every file in ``folder``; returns its path."""
    folder = Path(folder)
    readable_file(key.private_key, "private key")
    for path in (key.certificate, *key.chain):
        if path:
            readable_file(path, "certificate")
    check_key_outside(key, folder)
    ms = _model_signing()
    config = ms.signing.Config().set_hashing_config(_hashing_config(ms))
    try:
        if key.certificate:
            config.use_certificate_signer(private_key=key.private_key, signing_certificate=key.certificate,
                                          certificate_chain=list(key.chain))
        else:
            config.use_elliptic_key_signer(private_key=key.private_key)
        with tempfile.TemporaryDirectory(prefix="qexport-sign-") as tmp:
            signature = Path(tmp) / SIGNATURE_FILE  # written outside, then moved in whole
            config.sign(folder, signature)
            target = folder / SIGNATURE_FILE
            target.write_bytes(signature.read_bytes())
    except (ValueError, TypeError) as err:  # cryptography: not a PEM key, wrong key type, encrypted key
        raise QExportError(f"Cannot sign with {key.private_key}: {first_line(str(err), 160)}; pass an unencrypted "
                           "PEM private key (e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`).") \
            from err
    return target


def verify_folder(folder: Path, anchor: TrustAnchor) -> int:
    """Check ``folder/model.sig`` against ``anchor`` and every file in the folder; returns how many
    files it covers. A missing signature, another signer, or any added, removed or changed file is
    one sentence naming the first difference."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QExportError(f"{folder} is not a folder; a signature covers a whole folder (extract the bundle first).")
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise QExportError(f"{folder} has no signature ({SIGNATURE_FILE}) although a key to check it was given; it was "
                           "not signed or the signature was removed -- ask the sender for a signed bundle.")
    for path in (anchor.public_key, *anchor.certificate_chain):
        if path:
            readable_file(path, "public key" if path == anchor.public_key else "certificate chain")
    ms = _model_signing()
    config = ms.verifying.Config().set_hashing_config(_hashing_config(ms))
    try:
        if anchor.public_key:
            config.use_elliptic_key_verifier(public_key=anchor.public_key)
        else:
            config.use_certificate_verifier(certificate_chain=list(anchor.certificate_chain))
        config.verify(folder, signature)
    except ValueError as err:  # includes JSONDecodeError for a damaged model.sig
        raise QExportError(f"{folder}: {difference(str(err), anchor)}; do not deploy it -- ask the sender to sign "
                           "it again.") from err
    except Exception as err:  # noqa: BLE001 -- sigstore/cryptography raise their own types
        raise QExportError(f"{folder}: the signature does not verify against {anchor.describe()} "
                           f"({first_line(str(err), 120, default=type(err).__name__)}).") from err
    return len([p for p in folder.rglob("*") if p.is_file() and p.name != SIGNATURE_FILE])


def difference(message: str, anchor: TrustAnchor) -> str:
    """model_signing's error as one plain clause naming the first file that differs."""
    patterns = ((r"Hash mismatch for \\?'([^'\\]+)", "{} differs from what was signed"),
                (r"Extra files found in model \\?'[^']*': ([^,\"'\\\]]+)", "{} was added after signing"),
                (r"Missing files in model \\?'[^']*': ([^,\"'\\\]]+)", "{} was removed after signing"))
    for pattern, clause in patterns:
        found = re.search(pattern, message)
        if found:
            return clause.format(found.group(1).strip())
    if "Key mismatch" in message or "public key" in message.lower():
        return f"the signature was made with another key than {anchor.describe()}"
    return f"{SIGNATURE_FILE} is damaged or not a model signature ({first_line(message, 100)})"


def upstream_verify_command(method: str) -> str:
    """How to check a signed folder with the upstream tool alone (for the model card)."""
    if method == "certificate":
        return f"model_signing verify certificate . --signature {SIGNATURE_FILE} --certificate_chain chain.pem"
    return f"model_signing verify key . --signature {SIGNATURE_FILE} --public_key pub.pem"
