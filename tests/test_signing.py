"""Signed handoff (OpenSSF Model Signing): a signed folder or bundle verifies; any changed byte in
any file, an added or removed file, another signer's key and a missing signature are each refused
in one sentence before any manifest is trusted; keys never travel with the bundle."""

from __future__ import annotations

import tarfile

import pytest

pytest.importorskip("model_signing", reason="model-signing is not installed: pip install 'qexport[signing]'")

from qexport.core.errors import QExportError  # noqa: E402
from qexport.commands.pack import pack  # noqa: E402
from qexport.core.signing import SIGNATURE_FILE, SigningKey, TrustAnchor, sign_folder, verify_folder  # noqa: E402
from tests.conftest import copy_artifacts, run_cli  # noqa: E402

NAMES = ("resnet18.fp32.onnx", "resnet18.int8.openvino.xml")


def write_key_pair(folder, name: str):
    """An ECDSA P-256 key pair as PEM files (what `openssl ecparam -name prime256v1` makes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    return write_key_pair(folder, "builder"), write_key_pair(folder, "someone-else")


@pytest.fixture
def signed(built_artifacts, keys, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "signed", NAMES)
    sign_folder(folder, SigningKey(keys[0][0]))
    return folder


def refused(folder, public_key, match: str) -> None:
    with pytest.raises(QExportError, match=match) as caught:
        verify_folder(folder, TrustAnchor(public_key))
    assert "\n" not in str(caught.value)


def test_a_signed_folder_verifies_with_qexport_and_upstream(signed, keys):
    files = [p for p in signed.iterdir() if p.name != SIGNATURE_FILE]
    assert verify_folder(signed, TrustAnchor(keys[0][1])) == len(files)
    done = run_cli("verify", str(signed), "--public-key", str(keys[0][1]))
    assert done.returncode == 0, done.stderr
    assert "signature: verified" in done.stderr + done.stdout


def test_every_changed_byte_in_every_file_is_refused(signed, keys):
    for path in sorted(p for p in signed.iterdir() if p.name != SIGNATURE_FILE):
        original = path.read_bytes()
        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0x01
        path.write_bytes(bytes(changed))
        refused(signed, keys[0][1], f"{path.name} differs from what was signed")
        path.write_bytes(original)
    verify_folder(signed, TrustAnchor(keys[0][1]))  # restored: passes again


def test_added_removed_and_foreign_signatures_are_refused(signed, keys):
    (signed / "extra.onnx").write_bytes(b"smuggled")
    refused(signed, keys[0][1], "extra.onnx was added after signing")
    (signed / "extra.onnx").unlink()
    weights = signed / "resnet18.int8.openvino.bin"
    data = weights.read_bytes()
    weights.unlink()
    refused(signed, keys[0][1], "resnet18.int8.openvino.bin was removed after signing")
    weights.write_bytes(data)
    refused(signed, keys[1][1], "signature was made with another key")
    sign_folder(signed, SigningKey(keys[1][0]))  # re-signed by someone else: the builder's key refuses it
    refused(signed, keys[0][1], "another key")


def test_a_missing_signature_is_refused_when_a_key_is_given(signed, keys):
    (signed / SIGNATURE_FILE).unlink()
    refused(signed, keys[0][1], "has no signature")
    done = run_cli("verify", str(signed), "--public-key", str(keys[0][1]))
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_keys_stay_out_of_the_folder_and_bad_keys_are_one_sentence(built_artifacts, keys, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "f", NAMES[:1])
    inside = folder / "key.pem"
    inside.write_bytes(keys[0][0].read_bytes())
    with pytest.raises(QExportError, match="inside .* move the key out"):
        sign_folder(folder, SigningKey(inside))
    inside.unlink()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(QExportError, match="Cannot sign with .*garbage.pem"):
        sign_folder(folder, SigningKey(garbage))
    done = run_cli("sign", str(folder), "--key", str(tmp_path / "missing.pem"))
    assert done.returncode == 2 and "Cannot read private key" in done.stderr and "Traceback" not in done.stderr
    keys[0][0].chmod(0o644)
    done = run_cli("sign", str(folder), "--key", str(keys[0][0]))
    assert done.returncode == 0 and "readable by other users" in done.stderr


def test_a_signed_bundle_verifies_after_extraction(built_artifacts, keys, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "a", NAMES)
    bundle, _ = pack(folder, tmp_path / "handoff.tar.gz", SigningKey(keys[0][0]))
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "x", filter="data")
    assert f"handoff/{SIGNATURE_FILE}" in names and not any(n.endswith(".pem") for n in names)
    extracted = tmp_path / "x" / "handoff"
    card = (extracted / "MODEL_CARD.md").read_text()
    assert "model_signing verify key . --signature model.sig --public_key pub.pem" in card
    assert verify_folder(extracted, TrustAnchor(keys[0][1])) == len(names) - 1
    (extracted / "MODEL_CARD.md").write_text(card + "tampered")
    refused(extracted, keys[0][1], "MODEL_CARD.md differs")
