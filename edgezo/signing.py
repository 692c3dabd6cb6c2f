"""Signed messages (Ed25519): who made a message, where the broker's ACL cannot say.

On a broker without ACLs anyone can publish on any topic, so a device's name in the topic proves
nothing. With signing on (``coordinate --enrolled FILE``), every message travels in an envelope::

    b"EZS1" | signer's public key (32 bytes) | signature (64 bytes) | the msgpack payload

and the signature covers ``b"EZS1" | topic (UTF-8) | b"\\0" | payload``, so a signed message cannot
be moved to another topic (another device, another run) or altered by one byte. The receiver decides
whose key a topic needs: the coordinator the device's enrolled key, a device the coordinator's.

Keys: a private key is a PEM file (PKCS#8, mode 0600); a public key is one line of text,
``ed25519:<base64> <name>``, easy to paste into an enrolment file (one line per device id).

Everything here is pure (no MQTT); the ``cryptography`` package is imported on first use, so an
install without the ``signing`` extra fails with one line naming it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from edgezo.errors import EdgezoError
from edgezo.names import check_name

MAGIC = b"EZS1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
OVERHEAD = len(MAGIC) + KEY_BYTES + SIGNATURE_BYTES  # 100 bytes a signed message adds
PREFIX = "ed25519:"
INSTALL = "pip install 'edgezo[signing]' (or pip install cryptography)"


class SigningError(EdgezoError):
    """A key or enrolment file that cannot be used: the message names the file and the fix."""


class BadSignature(EdgezoError):
    """An envelope that does not verify: logged and dropped by the receiver, never fatal."""


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgezoError(f"signed messages need the cryptography package: {INSTALL}") from None
    return ed25519


# -- public keys -------------------------------------------------------------------------------
def public_text(public: bytes) -> str:
    """``ed25519:<base64>``: a public key as it appears in lines and logs."""
    return PREFIX + base64.b64encode(public).decode("ascii")


def public_line(public: bytes, name: str) -> str:
    """The line a device sends its operator (and the coordinator prints): ``ed25519:<b64> <name>``."""
    return f"{public_text(public)} {name}"


def parse_public(text: str, where: str = "public key") -> tuple[bytes, str | None]:
    """(32-byte key, name or None) from ``ed25519:<base64> [name]``."""
    parts = text.split()
    if not parts or not parts[0].startswith(PREFIX) or len(parts) > 2:
        raise SigningError(f"{where}: expected 'ed25519:<base64> [name]' (the line `edgezo keys show` prints), got {text.strip()[:80]!r}")
    try:
        raw = base64.b64decode(parts[0][len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SigningError(f"{where}: {parts[0][:60]!r} is not a base64 Ed25519 public key of {KEY_BYTES} bytes")
    return raw, (parts[1] if len(parts) == 2 else None)


def read_public(line_or_file: str, what: str = "--coordinator-key") -> bytes:
    """A public key given as its line, or as a file holding the line (``coordinator.pub``)."""
    text = line_or_file
    if not line_or_file.strip().startswith(PREFIX):
        path = Path(line_or_file).expanduser()
        try:
            text = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        except OSError as e:
            raise SigningError(f"{what} {line_or_file!r} is neither a public key line (ed25519:...) nor a readable file "
                               f"({e.strerror or e})") from None
    return parse_public(text, what)[0]


# -- private keys ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigningKey:
    """One party's private key and the raw public key that names it."""

    private: object  # cryptography's Ed25519PrivateKey
    public: bytes

    @property
    def text(self) -> str:
        return public_text(self.public)

    def line(self, name: str) -> str:
        return public_line(self.public, name)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def _of(private) -> SigningKey:
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SigningKey(private, raw)


def generate() -> SigningKey:
    return _of(_ed25519().Ed25519PrivateKey.generate())


def load_key(path: str | Path, make: str = "edgezo keys init") -> SigningKey:
    """The private key in ``path``; a missing or foreign file is one line saying what to do."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"no signing key at {path}; make one with `{make} --key {path}`") from None
    except OSError as e:
        raise SigningError(f"cannot read the signing key {path} ({e.strerror or e})") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{path} is not an unencrypted PEM private key ({e}); make one with `{make}`") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path} holds a {type(private).__name__.replace('_', '')}, not an Ed25519 key; make one with `{make}`")
    return _of(private)


def save_key(key: SigningKey, path: str | Path, force: bool = False) -> Path:
    """Write ``key`` to ``path`` (PEM, mode 0600, folder made); an existing file only with ``force``."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path).expanduser()
    if path.exists() and not force:
        raise SigningError(f"{path} already exists; pass --force to replace it (the coordinator must then enrol the new public line)")
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(tmp, 0o600)  # O_CREAT's mode only applies to a new file
        tmp.replace(path)
    except OSError as e:
        raise SigningError(f"cannot write the signing key {path} ({e.strerror or e}); pass another --key") from None
    return path


def default_key_path() -> Path:
    """Where `edgezo keys init` keeps this device's key: beside its device id, in the user's
    config folder (``$XDG_CONFIG_HOME/edgezo/device.key``, else ``~/.config/edgezo/device.key``)."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgezo" / "device.key"


def device_key(path: str | Path | None) -> SigningKey | None:
    """A device's key: the one at ``path`` (which must exist), else the default one if it exists, else None."""
    if path is not None:
        return load_key(path)
    default = default_key_path()
    return load_key(default) if default.is_file() else None


def key_or_new(path: str | Path) -> tuple[SigningKey, bool]:
    """The key in ``path``, made there first when the file does not exist; (key, made now)."""
    path = Path(path)
    if path.exists():
        return load_key(path), False
    _ed25519()
    key = generate()
    save_key(key, path)
    return key, True


# -- enrolment -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Enrolment:
    """The devices allowed in a signed job: device id -> public key (``--enrolled FILE``)."""

    keys: dict[str, bytes]
    source: str = ""

    def check(self, device: str, signer: bytes | None) -> str | None:
        """Why a message on ``device``'s topics signed by ``signer`` (None: unsigned) is refused; None: accepted."""
        if signer is None:
            return "unsigned (this job requires signed messages)"
        enrolled = self.keys.get(device)
        if enrolled is None:
            return f"device {device!r} is not enrolled (signed by {public_text(signer)})"
        if enrolled != signer:
            return f"signed by {public_text(signer)}, not device {device!r}'s enrolled key"
        return None


def parse_enrolment(text: str, source: str = "enrolment file") -> Enrolment:
    """Lines ``ed25519:<base64> <device-id>``; blank lines and ``#`` comments are skipped."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        raw, name = parse_public(line, where)
        if name is None:
            raise SigningError(f"{where}: the key has no device id after it (the line is 'ed25519:<base64> <device-id>')")
        try:
            check_name("device", name)
        except EdgezoError as e:
            raise SigningError(f"{where}: {e}") from None
        if name in keys:
            raise SigningError(f"{where}: device {name!r} is enrolled twice; keep one line per device")
        keys[name] = raw
    return Enrolment(keys, source)


def load_enrolment(path: str | Path) -> Enrolment:
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SigningError(f"cannot read the enrolment file {path} ({e.strerror or e}); pass --enrolled FILE "
                           "with one 'ed25519:<base64> <device-id>' line per device") from None
    enrolment = parse_enrolment(text, str(path))
    if not enrolment.keys:
        raise SigningError(f"the enrolment file {path} enrols no device; add one 'ed25519:<base64> <device-id>' line "
                           "per device (`edgezo keys show` on the device prints it)")
    return enrolment


# -- the envelope ----------------------------------------------------------------------------------
def _signed_bytes(topic: str, payload: bytes) -> bytes:
    return MAGIC + topic.encode("utf-8") + b"\0" + payload


def seal(key: SigningKey, topic: str, payload: bytes) -> bytes:
    """``payload`` signed for ``topic`` by ``key``, in its envelope."""
    return MAGIC + key.public + key.sign(_signed_bytes(topic, payload)) + payload


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` is an envelope (a protocol payload is a msgpack map, never 'E...')."""
    return data[: len(MAGIC)] == MAGIC


def unseal(topic: str, data: bytes) -> tuple[bytes, bytes]:
    """(signer's public key, payload) of an envelope received on ``topic``; BadSignature when it is
    cut short or its signature does not verify for this topic and payload."""
    ed25519 = _ed25519()
    from cryptography.exceptions import InvalidSignature

    if len(data) < OVERHEAD or not is_sealed(data):
        raise BadSignature(f"signed envelope of {len(data)} bytes is cut short (a signed message has {OVERHEAD} bytes before its payload)")
    start = len(MAGIC)
    signer = data[start : start + KEY_BYTES]
    signature = data[start + KEY_BYTES : OVERHEAD]
    payload = data[OVERHEAD:]
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(signer).verify(signature, _signed_bytes(topic, payload))
    except (InvalidSignature, ValueError):
        raise BadSignature(f"bad signature (by {public_text(signer)}): forged, altered, or moved from another topic") from None
    return signer, payload
