"""``pixelwise serve``: a trained model behind an HTTP API and a web page (FastAPI on uvicorn).

- :func:`create_app` -> the FastAPI application (the model loaded once; ``POST /v1/segment``, ``GET /v1/model``,
  ``GET /healthz``, ``GET /``), for tests or another ASGI server;
- :func:`run` serves it on ``host:port`` until interrupted (what the CLI calls);
- :func:`make_server` binds the socket and returns the uvicorn server without running it (tests, benchmarks).

FastAPI, uvicorn and python-multipart come with the ``[serve]`` extra; importing this package needs none of
them, calling it does (a one-line :class:`~pixelwise.errors.PixelwiseError` says what to install)."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PixelwiseError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

INSTALL_HINT = "pixelwise serve needs FastAPI, uvicorn and python-multipart: pip install 'pixelwise[serve]'"


def _require() -> None:
    # python-multipart (which parses the upload form) is the module python_multipart, formerly multipart
    for names in (("fastapi",), ("uvicorn",), ("python_multipart", "multipart")):
        if not any(importlib.util.find_spec(name) for name in names):
            raise PixelwiseError(f"{INSTALL_HINT} ({names[0]} is missing)")


def create_app(checkpoint: Any, **options: Any) -> FastAPI:
    """The FastAPI application of one model; see :func:`pixelwise.serve.app.create_app` for the options
    (``backend``, ``device``, ``amp``, ``max_queue``, ``max_bytes``, ``max_pixels``, ``timeout_s``)."""
    _require()
    from .app import create_app as _create_app

    return _create_app(checkpoint, **options)


def ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``text`` spells (``::1``, ``127.0.0.2``, the short ``127.1`` that getaddrinfo binds too; an
    IPv4-mapped IPv6 one as its IPv4 address); None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        try:  # inet_aton takes the IPv4 forms with fewer dots; only digits and dots (it also skips trailing junk)
            address = ipaddress.IPv4Address(socket.inet_aton(text)) if text.replace(".", "").isdigit() else None
        except OSError:
            address = None
    return getattr(address, "ipv4_mapped", None) or address


def check_host(host: str) -> bool:
    """Warn when ``host`` is reachable from other machines (a wildcard or a non-loopback address): the server
    has no authentication, and anyone who reaches the port can send it work. True for a loopback host."""
    address = ip_literal(host)
    if address is None:  # a name: loopback only if it is "localhost"
        if host != "localhost":
            log.warning("serving on %s: every machine that can reach that name can use the model", host)
        return host == "localhost"
    if address.is_loopback:
        return True
    if address.is_unspecified:
        log.warning(
            "serving on %s listens on every network interface: anyone who can reach this machine can send images "
            "to the model (there is no authentication); use 127.0.0.1 unless that is meant",
            host,
        )
    else:
        log.warning("serving on %s: every machine that can reach that address can use the model", host)
    return False


def check_port(port: int) -> None:
    """A one-line ConfigError unless ``port`` is a TCP port (the OS would take 70000 as 70000 mod 65536)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be 0-65535 (0: a free one)")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to exactly ``host:port`` (port 0: a free one) and listening; a one-line ConfigError if it
    cannot be."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        # listening from here on: the address is said (and a client may connect) before uvicorn has started, and a
        # bound socket that does not listen yet refuses connections (the kernel queues them once it listens)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def make_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **config: Any) -> tuple[Any, socket.socket]:
    """``(uvicorn.Server, bound socket)`` for ``app``: start it with ``server.run(sockets=[sock])`` (in a thread
    for tests), stop it with ``server.should_exit = True``. Binding here, not in uvicorn, gives a one-line error
    for a busy port and the real port of ``port=0`` (``sock.getsockname()[1]``)."""
    _require()
    import uvicorn

    if check_host(host):
        from .app import LoopbackHosts

        if not any(m.cls is LoopbackHosts for m in app.user_middleware):
            app.add_middleware(LoopbackHosts)
    sock = bind(host, port)
    from .app import request_limit

    limits = getattr(app.state, "limits", None)
    settings: dict[str, Any] = {
        # bodies are read before a request joins the queue: the app's RequestLimit bounds the requests in flight
        # (so the memory their uploads can hold, at most that many x max_bytes) with a JSON 503; uvicorn's own
        # limit, on connections (idle keep-alive ones too) and in plain text, stays above it as a backstop
        "limit_concurrency": 2 * request_limit(limits) if limits is not None else None,
        "log_level": "info",
        "server_header": False,
        "proxy_headers": False,  # no proxy in front by default: log the real client address
        # on SIGTERM, let a request already accepted finish within its own limit
        "timeout_graceful_shutdown": (limits.timeout_s if limits is not None else 30) + 5,
        **config,
    }
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, **settings)), sock


def run(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = True,
    **options: Any,
) -> None:
    """Serve ``checkpoint`` on ``host:port`` (127.0.0.1 by default: this machine only) until interrupted.
    ``options`` as :func:`create_app` (backend, device, amp, and the limits)."""
    app = create_app(checkpoint, **options)
    server, sock = make_server(app, host, port, log_level=log_level, access_log=access_log)
    bound = sock.getsockname()
    log.info("pixelwise serve: http://%s:%d/ (Ctrl+C stops it)", host if ":" not in host else f"[{host}]", bound[1])
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.started and server.should_exit:
        # stopped by Ctrl+C (or SIGTERM) yet returned normally: uvicorn re-raises the signal as its serve task
        # ends, and asyncio.run does not always turn that into KeyboardInterrupt; report it as one (exit 130)
        raise KeyboardInterrupt


__all__ = ["INSTALL_HINT", "bind", "check_host", "check_port", "create_app", "ip_literal", "make_server", "run"]
