"""Fetching http(s) media URLs, when the operator turned it on: timeout, size cap, public
addresses only.

Every address the host name resolves to must be public (not private, loopback, link-local,
multicast, reserved or unspecified). Plain-http requests are sent to the very address that was
checked (the Host header carries the name), so a second DNS answer cannot point elsewhere; https
requests go by name, and the certificate must match it. Redirects are followed by hand, each hop
checked again.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from .errors import APIError

MAX_REDIRECTS = 3


def _refuse(param: str, why: str, status: int = 400, code: str = "remote_fetch_failed") -> APIError:
    return APIError(status, f"{param}: {why}", param=param, code=code)


async def public_address(host: str, port: int, param: str) -> str:
    """Resolve `host`; every address must be public. Returns the first one."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise _refuse(param, f"cannot resolve {host!r} ({e})") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise _refuse(param, f"{host!r} resolves to a private, loopback or reserved address; "
                                 "only public addresses are fetched", code="remote_address_refused")
    if not addresses:
        raise _refuse(param, f"cannot resolve {host!r}")
    return addresses[0]


async def fetch(url: str, param: str, timeout_s: float, max_bytes: int,
                check_address: bool = True) -> tuple[bytes, str | None]:
    """GET `url` -> (body, content type). `check_address=False` is for tests only."""
    try:
        return await asyncio.wait_for(_follow(url, param, timeout_s, max_bytes, check_address), timeout_s)
    except asyncio.TimeoutError:
        raise _refuse(param, f"fetching the URL took longer than {timeout_s:g} s") from None


async def _follow(url: str, param: str, timeout_s: float, max_bytes: int,
                  check_address: bool) -> tuple[bytes, str | None]:
    for _ in range(MAX_REDIRECTS + 1):
        response = await _get_once(url, param, timeout_s, max_bytes, check_address)
        if not isinstance(response, str):
            return response
        url = response  # a redirect: checked again on the next round
    raise _refuse(param, f"more than {MAX_REDIRECTS} redirects")


async def _get_once(url: str, param: str, timeout_s: float, max_bytes: int,
                    check_address: bool) -> tuple[bytes, str | None] | str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse(param, "only http and https URLs are fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target, headers = httpx.URL(url), {}
    if check_address:
        address = await public_address(parts.hostname, port, param)
        if parts.scheme == "http":  # pin the checked address
            target = target.copy_with(host=address)
            headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            async with client.stream("GET", target, headers=headers) as response:
                if response.is_redirect and "location" in response.headers:
                    return str(httpx.URL(url).join(response.headers["location"]))
                if response.status_code != 200:
                    raise _refuse(param, f"the URL answered HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise _too_big(param, max_bytes)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise _too_big(param, max_bytes)
                return bytes(body), response.headers.get("content-type")
    except httpx.HTTPError as e:
        raise _refuse(param, f"fetching the URL failed ({type(e).__name__})") from None


def _too_big(param: str, max_bytes: int) -> APIError:
    return _refuse(param, f"the remote file is over the {max_bytes} byte limit", 413, "media_too_large")
