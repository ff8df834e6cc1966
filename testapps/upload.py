"""An HTTP raw handler that answers with the size of the body it received, for the tests
of ``--limit-request-body``:

    python -m pulsar_arbiter --http testapps.upload:size --limit-request-body 10485760
"""

from __future__ import annotations

from pulsar_arbiter.http import HttpRequest, Response


def size(request: HttpRequest) -> Response:
    """``<bytes received>`` as text/plain."""
    return Response(b"%d" % len(request.body), content_type="text/plain")
