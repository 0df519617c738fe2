"""Checkpoint signatures (OpenSSF model-signing, offline): key and certificate modes, every
way a signed checkpoint can stop matching, the CLI, and the serving loader's rules."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from raysight import cli
from raysight.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, manifest_sha256
from raysight.checkpoint.signing import SIGNATURE_FILE, sign_checkpoint, verify_signature
from raysight.errors import CheckpointError, ConfigError
from raysight.serve.model import load_served_model
from raysight.serve.settings import CheckpointTrust, ServeSettings
from tests.keys import KeyPair, certified_key, key_pair
from tests.unit.test_checkpoint import _model, _save


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return _save(tmp_path / "ckpt", _model())


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return key_pair(tmp_path)


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))


def test_a_signed_checkpoint_verifies_and_still_loads(checkpoint: Path, keys: KeyPair) -> None:
    signature = sign_checkpoint(checkpoint, keys.private)
    assert signature == checkpoint / SIGNATURE_FILE and signature.stat().st_size > 0
    verify_signature(checkpoint, keys.public)
    served = load_served_model(str(checkpoint), "", "cpu", CheckpointTrust(signer=str(keys.public)))
    assert served.engine.manifest.model == "convnet"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: _flip_last_byte(c / WEIGHTS_FILE), f"{WEIGHTS_FILE} changed since signing"),
        (lambda c: _flip_last_byte(c / MANIFEST_FILE), f"{MANIFEST_FILE} changed since signing"),
        (lambda c: (c / "extra.bin").write_bytes(b"x"), "extra.bin"),
        (lambda c: (c / WEIGHTS_FILE).unlink(), WEIGHTS_FILE),
    ],
    ids=["weights", "manifest", "added-file", "removed-file"],
)
def test_any_change_after_signing_is_refused(
    checkpoint: Path, keys: KeyPair, change: object, words: str
) -> None:
    sign_checkpoint(checkpoint, keys.private)
    change(checkpoint)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match="signature check failed") as error:
        verify_signature(checkpoint, keys.public)
    assert words in str(error.value)


def test_another_key_and_no_signature_are_refused(
    checkpoint: Path, keys: KeyPair, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match=f"unsigned \\(no {SIGNATURE_FILE}\\)"):
        verify_signature(checkpoint, keys.public)
    sign_checkpoint(checkpoint, keys.private)
    other = key_pair(tmp_path, "other")
    with pytest.raises(CheckpointError, match="signature check failed: Key mismatch"):
        verify_signature(checkpoint, other.public)
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    with pytest.raises(CheckpointError, match="neither a PEM public key nor a PEM certificate"):
        verify_signature(checkpoint, not_a_key)


def test_certificate_mode_trusts_what_the_ca_certified(checkpoint: Path, tmp_path: Path) -> None:
    signer = certified_key(tmp_path)
    sign_checkpoint(checkpoint, signer.private, certificate=signer.certificate, chain=[signer.ca])
    verify_signature(checkpoint, signer.ca)
    stranger = certified_key(tmp_path, "stranger")
    with pytest.raises(CheckpointError, match="signature check failed"):
        verify_signature(checkpoint, stranger.ca)


def test_serving_refuses_what_the_trust_refuses(
    checkpoint: Path, keys: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    trust = CheckpointTrust(signer=str(keys.public))
    with caplog.at_level(logging.WARNING, logger="raysight.serve.model"):
        load_served_model(str(checkpoint), "", "cpu", trust)  # unsigned: allowed, with a warning
    assert "unsigned" in caplog.text
    required = CheckpointTrust(signer=str(keys.public), require_signature=True)
    with pytest.raises(CheckpointError, match="unsigned"):
        load_served_model(str(checkpoint), "", "cpu", required)
    sign_checkpoint(checkpoint, keys.private)
    load_served_model(str(checkpoint), "", "cpu", required)
    _flip_last_byte(checkpoint / WEIGHTS_FILE)
    for refused in (trust, required):  # a wrong signature is refused even when optional
        with pytest.raises(CheckpointError, match="changed since signing"):
            load_served_model(str(checkpoint), "", "cpu", refused)
    with pytest.raises(ConfigError, match="require_signature needs signature_trust"):
        ServeSettings(checkpoint=str(checkpoint), require_signature=True)


def test_pin_and_signature_together(checkpoint: Path, keys: KeyPair, tmp_path: Path) -> None:
    sign_checkpoint(checkpoint, keys.private)
    pin = manifest_sha256(checkpoint)
    both = CheckpointTrust(sha256=pin, signer=str(keys.public), require_signature=True)
    assert load_served_model(str(checkpoint), "", "cpu", both).engine.manifest.model == "convnet"
    # A validly signed but different checkpoint at the path: the pin refuses it.
    other = tmp_path / "other"
    torch.manual_seed(1)
    _save(other, _model())
    sign_checkpoint(other, keys.private)
    shutil.rmtree(checkpoint)
    shutil.copytree(other, checkpoint)
    with pytest.raises(CheckpointError, match="not the pinned"):
        load_served_model(str(checkpoint), "", "cpu", both)


def test_sign_and_verify_commands(
    checkpoint: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["sign", str(checkpoint), "--key", str(keys.private)]) == 0
    assert f"signed: {checkpoint / SIGNATURE_FILE}" in capsys.readouterr().out
    pin = manifest_sha256(checkpoint)
    argv = ["verify", str(checkpoint), "--trust", str(keys.public), "--sha256", pin]
    assert cli.main(argv) == 0
    assert f"manifest sha256 {pin}, signature verified" in capsys.readouterr().out
    _flip_last_byte(checkpoint / WEIGHTS_FILE)
    assert cli.main(argv) == 2
    assert "model.safetensors changed since signing" in capsys.readouterr().err
    assert cli.main(["sign", str(checkpoint), "--key", str(keys.public)]) == 2
    assert f"cannot sign {checkpoint}" in capsys.readouterr().err


def test_serve_refuses_an_unsigned_checkpoint_before_any_cluster(
    checkpoint: Path,
    keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raysight import cluster

    def no_cluster(**_: object) -> None:
        raise AssertionError("a Ray cluster was started before the signature was checked")

    monkeypatch.setattr(cluster, "connected", no_cluster)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trust = ["--signature-trust", str(keys.public), "--require-signature"]
    assert cli.main(["serve", "--checkpoint", str(checkpoint), *trust]) == 2
    assert f"unsigned (no {SIGNATURE_FILE})" in capsys.readouterr().err
