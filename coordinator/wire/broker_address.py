"""Where an MQTT broker is: ``--broker`` parsed (one address, or a clustered broker's nodes),
and the settings a link connects with (login, TLS files, keepalive).

Pure (no network): the coordinator, the device, the embedded broker and the web server all name
a broker the same way, and the parsing's errors are one line naming the accepted forms.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from edgezo.errors import EdgezoError

_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class BrokerSettings:
    """Where the broker is and how to authenticate to it.

    TLS is used as soon as any ``tls_*`` field is set. ``tls_ca`` is the CA file
    that signed the broker's certificate (None: the system's CAs); ``tls_cert`` /
    ``tls_key`` are the client's own certificate for brokers that require one;
    ``tls_insecure`` skips verifying the broker's certificate (lab setups with a
    self-signed broker only). ``keepalive`` (seconds) also bounds how fast the
    broker notices a dead client and sends its last will: about 1.5 x keepalive.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 15
    fallbacks: tuple[tuple[str, int], ...] = ()  # the other nodes of a clustered broker, tried in turn

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every node: (host, port) first, then the fallbacks."""
        return [(self.host, self.port), *self.fallbacks]

    def node(self, index: int) -> "BrokerSettings":
        """These settings for node ``index`` of :attr:`addresses` alone."""
        host, port = self.addresses[index]
        return dataclasses.replace(self, host=host, port=port, fallbacks=())

    @property
    def use_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key or self.tls_insecure)

    @property
    def address(self) -> str:
        """``host:port`` for messages, with IPv6 hosts bracketed."""
        return format_address(self.host, self.port)



def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_broker(text: str, default_port: int = 1883) -> tuple[str, int]:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` into (host, port).

    A bare IPv6 address (``::1``) is accepted as a host; to give it a port it must be
    bracketed, since ``fe80::1:1883`` is ambiguous. Raises :class:`EdgezoError` on
    anything else, naming the accepted forms.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise _bad_broker(text, "it is empty")
    if "://" in raw:
        raise _bad_broker(text, "leave out the scheme (TLS is chosen with the --tls-* options)")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep:
            raise _bad_broker(text, "missing ']' after the IPv6 address")
        _check_ipv6(text, host)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise _bad_broker(text, f"unexpected {rest!r} after ']'")
        return host, _parse_port(text, rest[1:])
    if raw.count(":") > 1:  # bare IPv6 address, no port
        _check_ipv6(text, raw)
        return raw, default_port
    host, sep, port_text = raw.partition(":")
    if not _HOSTNAME.match(host):
        raise _bad_broker(text, f"{host!r} is not a host name or IP address")
    return host, (_parse_port(text, port_text) if sep else default_port)


def parse_brokers(text: str, default_port: int = 1883) -> list[tuple[str, int]]:
    """Parse ``--broker``: one address, or the comma-separated nodes of one clustered broker
    (``10.0.0.1:1883,10.0.0.2:1883``), each in a form :func:`parse_broker` accepts."""
    parts = [part.strip() for part in (text.split(",") if isinstance(text, str) else [text])]
    if len(parts) > 1 and not all(parts):
        raise _bad_broker(text, "an empty address between commas")
    addresses = [parse_broker(part, default_port) for part in parts]
    repeated = sorted({format_address(*a) for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise _bad_broker(text, f"{', '.join(repeated)} is listed twice")
    return addresses


def broker_settings_for(text: str | None, default_port: int = 1883, **options) -> BrokerSettings:
    """:class:`BrokerSettings` for a ``--broker`` value (None: 127.0.0.1), with the other
    options (username=..., tls_ca=...) as given."""
    addresses = parse_brokers(text, default_port) if text else [("127.0.0.1", default_port)]
    (host, port), rest = addresses[0], tuple(addresses[1:])
    return BrokerSettings(host=host, port=port, fallbacks=rest, **options)


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad_broker(text, f"port {port_text!r} is not a number from 1 to 65535")
    return int(port_text)


def _check_ipv6(text: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise _bad_broker(text, f"{host!r} is not an IPv6 address") from None


def _bad_broker(text: object, why: str) -> EdgezoError:
    return EdgezoError(
        f"bad broker address {text!r}: {why}; give HOST, HOST:PORT or [IPv6]:PORT (e.g. 192.168.1.10:1883), "
        "or a clustered broker's nodes separated by commas"
    )
