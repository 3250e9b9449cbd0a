"""Pipeline options: the service's own, and the few a client may contribute.

Beam's Expand merges the client's pipeline options over the service's, protecting only
``runner`` and ``experiments``. Left alone, a client could replace the service's environment
(a Java client's LOOPBACK environment options have broken expansion that way), switch the
process-wide pickler or file-system settings, or name a pickled ``on_success_matcher`` that
Beam's option validator unpickles (when hamcrest is installed). So a client's options are
filtered down to an allowlist of options that only shape how the transform is built.
"""

from __future__ import annotations

import re
from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from google.protobuf import struct_pb2

# Options a client may set for its expansion; everything else is the service's.
CLIENT_OPTIONS = frozenset({
    "streaming",
    "resource_hints",
    "update_compatibility_version",
    "allow_unsafe_triggers",
    "allow_non_deterministic_key_coders",
    "pipeline_type_check",
    "type_check_strictness",
    "type_check_additional",
})

_OPTION_KEY = re.compile(r"^beam:option:([A-Za-z0-9_]+):v1$")


def service_options(
        *, loopback_address: Optional[str], container_image: Optional[str]) -> PipelineOptions:
    """The service's options: an EXTERNAL loopback environment, or DOCKER with the image."""
    if container_image:
        environment = dict(
            environment_type=common_urns.environments.DOCKER.urn,
            environment_config=container_image)
    elif loopback_address:
        environment = dict(
            environment_type=common_urns.environments.EXTERNAL.urn,
            environment_config=loopback_address)
    else:
        raise ValueError("either a loopback address or a container image is needed")
    # As Beam's expansion_service_main: the SDK comes from the worker (container), not staged.
    # runner: only named so Beam does not log that it picked the default for each expansion.
    return PipelineOptions(
        flags=[], runner="DirectRunner", experiments=["beam_fn_api"], sdk_location="container",
        **environment)


def client_options(options: struct_pb2.Struct) -> tuple[struct_pb2.Struct, list[str]]:
    """Keep the client options in CLIENT_OPTIONS; return them and the names dropped."""
    kept = struct_pb2.Struct()
    dropped = []
    for key, value in options.fields.items():
        match = _OPTION_KEY.match(key)
        if match and match.group(1) in CLIENT_OPTIONS:
            kept.fields[key].CopyFrom(value)
        else:
            dropped.append(match.group(1) if match else key)
    return kept, sorted(dropped)
