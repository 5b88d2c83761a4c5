"""Where a request may go, and with which headers: the one place that decides.

* A vendor's key goes only to that vendor's API hosts (`Provider.api_hosts`, plus the origin
  of its base URL override). Any other URL, however a vendor answer names it (fal's
  `status_url`, a media URL, a redirect's `Location`), is sent without credential headers.
* Redirects are followed here, one hop at a time, so that every hop gets the same rule: httpx
  itself drops only `Authorization` when a redirect changes origin, and would send
  `x-goog-api-key` / `x-api-key` wherever it points.
* A URL outside the vendor's API hosts must be https (plain http only to a loopback address,
  when the vendor's own base URL is http, or with STORYREEL_ALLOW_HTTP=1) and must not reach a
  loopback, private, link-local or reserved address unless the vendor's base URL is one (a
  local emulator or proxy). Names are resolved before the request is sent, and the address
  actually connected to is checked again (a name that re-resolves elsewhere is caught).
  Anything else (`file:`, `ftp:`, `data:`) is refused at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from providers.errors import UnsafeURLError

# headers that carry a credential in some vendor's protocol (adapters may add their own)
CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "x-goog-api-key", "x-key",
    "api-key", "x-api-token", "x-auth-token",
})
MAX_REDIRECTS = 10
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin(url: httpx.URL | str) -> Origin:
    u = httpx.URL(url) if isinstance(url, str) else url
    scheme = u.scheme.lower()
    return scheme, (u.host or "").lower(), u.port or _DEFAULT_PORTS.get(scheme, 0)


def category(address: str) -> str | None:
    """None for a public address; else what kind of non-public address it is."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"  # 169.254.169.254 is the cloud metadata service
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "private"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` names (itself when it is a literal address)."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%")[0])
        return [bare]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _allow_http_setting() -> bool:
    return os.environ.get("STORYREEL_ALLOW_HTTP", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Hosts:
    """One vendor's trusted origins and credential header names."""

    origins: frozenset[Origin]
    base_url: str = ""
    credentials: frozenset[str] = CREDENTIAL_HEADERS
    _base_kinds: dict[str, frozenset[str]] = field(default_factory=dict, compare=False,
                                                   repr=False)

    @classmethod
    def for_vendor(cls, api_hosts: Iterable[str], base_url: str,
                   credentials: Iterable[str] = ()) -> Hosts:
        found = {("https", h.lower(), 443) for h in api_hosts}
        if base_url:
            found.add(origin(base_url))
        return cls(frozenset(found), base_url,
                   CREDENTIAL_HEADERS | {c.lower() for c in credentials})

    def trusted(self, url: httpx.URL | str) -> bool:
        """May this URL receive the vendor's key?"""
        try:
            return origin(url) in self.origins
        except (httpx.InvalidURL, TypeError):
            return False

    def strip(self, headers: httpx.Headers) -> None:
        for name in list(headers.keys()):
            if name.lower() in self.credentials:
                del headers[name]

    async def allowed_kinds(self) -> frozenset[str]:
        """Non-public address kinds the base URL itself has (a local emulator, a proxy)."""
        if "kinds" not in self._base_kinds:
            kinds: set[str] = set()
            if self.base_url:
                _, host, port = origin(self.base_url)
                try:
                    kinds = {k for a in await resolve(host, port) if (k := category(a))}
                except OSError:
                    kinds = set()
            self._base_kinds["kinds"] = frozenset(kinds)
        return self._base_kinds["kinds"]

    async def check(self, url: httpx.URL) -> None:
        """Refuse a URL outside the vendor's API hosts that is not a safe public https URL."""
        if self.trusted(url):
            return
        scheme, host, port = origin(url)
        if scheme not in ("http", "https"):
            raise UnsafeURLError(f"refusing to fetch a {scheme or 'schemeless'}: URL "
                                 f"({_short(url)}); only https is fetched")
        try:
            addresses = await resolve(host, port)
        except OSError:
            return  # the connection will fail on its own, as a transient error
        kinds = {category(a) for a in addresses}
        await self._check_kinds(url, kinds, addresses)
        if scheme == "http" and not (
                kinds == {"loopback"} or origin(self.base_url)[0] == "http"
                or _allow_http_setting()):
            raise UnsafeURLError(f"refusing plain http ({_short(url)}); only https is fetched "
                                 "(STORYREEL_ALLOW_HTTP=1 allows http)")

    async def check_peer(self, url: httpx.URL, resp: httpx.Response) -> None:
        """The address actually connected to (catches names that re-resolve elsewhere)."""
        if self.trusted(url):
            return
        stream = resp.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            await self._check_kinds(url, {category(str(peer[0]))}, [str(peer[0])])

    async def _check_kinds(self, url: httpx.URL, kinds: set[str | None],
                           addresses: list[str]) -> None:
        bad = {k for k in kinds if k is not None} - await self.allowed_kinds()
        if bad:
            raise UnsafeURLError(f"refusing to fetch {_short(url)}: it points at a "
                                 f"{'/'.join(sorted(bad))} address ({', '.join(addresses)}), "
                                 "and this vendor's base URL is not one")


def _short(url: httpx.URL | str) -> str:
    text = str(url)
    return text if len(text) <= 120 else text[:117] + "..."


def for_url(url: str) -> Hosts:
    """A policy for a caller that names the URL itself (no vendor): that origin is trusted."""
    return Hosts.for_vendor((), url)


async def open_request(client: httpx.AsyncClient, method: str, url: str, hosts: Hosts, *,
                       stream: bool = False, headers: Mapping[str, str] | None = None,
                       **kwargs: Any) -> httpx.Response:
    """Send a request and follow its redirects, checking every hop: credentials only to the
    vendor's hosts, other hosts only if safe. With `stream` the caller closes the response."""
    request = client.build_request(method, url, headers=headers, **kwargs)
    for _ in range(MAX_REDIRECTS + 1):
        if not hosts.trusted(request.url):
            hosts.strip(request.headers)
            await hosts.check(request.url)
        resp = await client.send(request, stream=True, follow_redirects=False)
        try:
            await hosts.check_peer(request.url, resp)
            nxt = resp.next_request if resp.has_redirect_location else None
            if nxt is None:
                if not stream:
                    await resp.aread()
                return resp
        except BaseException:
            await resp.aclose()
            raise
        await resp.aclose()
        request = nxt
    raise UnsafeURLError(f"more than {MAX_REDIRECTS} redirects from {_short(url)}")
