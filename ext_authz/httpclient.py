"""Outbound HTTP for the edges that fetch (remote JWKS, SSF transmitters and receivers): urllib
without redirects. A redirect could lead from https to plaintext, or hand a bearer secret to another
host; here it is an error (``HTTPError`` with the 3xx status), never followed."""

from __future__ import annotations

import http.client
import ssl
import urllib.request

__all__ = ["open_url"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it could lead from https to http, or hand a bearer secret to another
    host."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def open_url(
    request: urllib.request.Request, timeout: float, context: ssl.SSLContext | None = None
) -> http.client.HTTPResponse:
    """``urlopen`` without following redirects (a 3xx comes back as an HTTPError)."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    response: http.client.HTTPResponse = urllib.request.build_opener(*handlers).open(request, timeout=timeout)
    return response
