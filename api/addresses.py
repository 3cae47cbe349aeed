"""Which hosts and addresses are public: what RunComfy's servers can fetch a reference from, and where result
files may be downloaded from. Judged by the address, whatever its spelling (2130706433, 127.1, 0x7f.1, IPv6 forms
that embed an IPv4 address)."""

from __future__ import annotations

import ipaddress
import re
import socket


def is_private_host(host: str) -> bool:
    """localhost, .local/.internal names and non-global IP literals: hosts the public internet cannot reach."""
    lowered = host.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(lowered.strip("[]"))
    except ValueError:
        address = _numeric_ipv4(lowered)
        if address is None:
            return False
    return not is_public_address(address)


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> bool:
    """A globally routable unicast address. IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64's
    64:ff9b::/96) are judged by that address; loopback, private, link-local, multicast, reserved and unspecified are not public."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:  # DNS64 on an IPv6-only network: the gateway reaches this IPv4 host
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local  # fec0::/10, deprecated yet routed inside
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_link_local or site_local)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix (RFC 6052)


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address of a numeric host in a form browsers and resolvers accept (2130706433, 127.1, 0x7f.1)."""
    if not re.fullmatch(r"[0-9a-fx.]+", host) or not any(ch.isdigit() for ch in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None
