"""For Python clients: reach a service that wants a token and/or TLS.

Beam's ``ExternalTransform`` takes, instead of an address, any object with an ``Expand``
method (``ExpansionAndArtifactRetrievalStub``); ``connect`` gives one on a channel that carries
the token (``authorization: Bearer``) and speaks TLS::

    stub = expansion_service.connect("svc.example:8097", token_file="~/.crossinfer-token",
                                     root_certificates_file="ca.pem")
    rows | beam.ExternalTransform(urn, payload, stub)
"""

from __future__ import annotations

import os
from typing import Any, Optional


def connect(address: str, *, token_file: Optional[str] = None,
            root_certificates_file: Optional[str] = None, tls: Optional[bool] = None) -> Any:
    """An expansion stub for ``address`` with the token in ``token_file`` (first line) and TLS
    (on when ``root_certificates_file`` is given or ``tls`` is True; the system's roots when
    no file). Without TLS the token is sent only to a loopback address."""
    import grpc
    from apache_beam.transforms.external import ExpansionAndArtifactRetrievalStub

    tls = bool(root_certificates_file) if tls is None else tls
    token = None
    if token_file:
        with open(os.path.expanduser(token_file)) as f:
            token = next((line.strip() for line in f if line.strip()
                          and not line.startswith("#")), None)
        if not token:
            raise ValueError(f"token_file={token_file!r} holds no token")
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    if tls:
        roots = None
        if root_certificates_file:
            with open(os.path.expanduser(root_certificates_file), "rb") as f:
                roots = f.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    else:
        # gRPC sends call credentials only over a protected channel; a loopback connection is
        # one (local credentials refuse any other address).
        credentials = grpc.local_channel_credentials()
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    return ExpansionAndArtifactRetrievalStub(grpc.secure_channel(address, credentials, options))
