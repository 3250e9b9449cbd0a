"""Artifact retrieval limited to the artifacts this service itself hands out.

Clients fetch the dependencies of the environments in an expansion response from the
expansion service. Beam's stock retrieval service reads any path or URL a caller names (any
file this process can read, any URL it can reach); this one serves only the artifacts listed
in the service's own environment.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from apache_beam.portability.api import beam_artifact_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability import artifact_service


def _key(artifact: beam_runner_api_pb2.ArtifactInformation) -> tuple[str, bytes]:
    return artifact.type_urn, artifact.type_payload


class OwnArtifactsRetrievalService(artifact_service.ArtifactRetrievalService):
    """Resolves and streams only the given artifacts; refuses every other request."""

    def __init__(self, artifacts: Iterable[beam_runner_api_pb2.ArtifactInformation]) -> None:
        super().__init__(artifact_service.BeamFilesystemHandler(None).file_reader)
        self._served = {_key(a) for a in artifacts}

    def _refuse(self, artifacts, context) -> None:
        unknown = [a.type_urn for a in artifacts if _key(a) not in self._served]
        if unknown:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this expansion service serves only the artifacts of the environments it "
                f"hands out; refused {len(unknown)} other artifact(s)")

    def ResolveArtifacts(self, request, context=None):
        self._refuse(request.artifacts, context)
        return beam_artifact_api_pb2.ResolveArtifactsResponse(replacements=request.artifacts)

    def GetArtifact(self, request, context=None):
        self._refuse([request.artifact], context)
        yield from super().GetArtifact(request, context)
