"""Write protos/envoy/descriptors.binpb: the Envoy API files that Check needs, as a FileDescriptorSet.

Run by `make envoy-protos` in a throwaway environment that has xds-protos (the gRPC team's build of
envoyproxy/data-plane-api) at the version pinned in the Makefile. ext-authz itself does not depend on
xds-protos: that wheel also installs old copies of OpenTelemetry's proto modules under their import paths,
which breaks the OTLP exporter. `make protos` then compiles this set into ext_authz/_proto/envoy/.

What is kept: `envoy/service/auth/v3/external_auth.proto` and every file it imports, except
- google/protobuf/* (protobuf's own runtime has them) and google/rpc/status.proto
  (googleapis-common-protos has it);
- the annotation-only files (udpa/annotations, validate, xds/annotations, envoy/annotations): their
  options describe validation and API status for code generators and change nothing on the wire, so they
  are removed from every descriptor together with the imports that declared them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "protos" / "envoy" / "descriptors.binpb"
FROM_RUNTIME = ("google/protobuf/", "google/rpc/status.proto")
ANNOTATIONS = ("udpa/annotations/", "validate/", "xds/annotations/", "envoy/annotations/")


def closure() -> list[str]:
    seen: dict[str, object] = {}

    def walk(fd: object) -> None:
        name = fd.name  # type: ignore[attr-defined]
        if name in seen:
            return
        seen[name] = fd
        for dep in fd.dependencies:  # type: ignore[attr-defined]
            walk(dep)

    walk(external_auth_pb2.DESCRIPTOR)
    return sorted(seen)


def strip_extensions(msg: Message) -> None:
    """Drop every extension (the annotation options) and unknown field, recursively."""
    for field, value in msg.ListFields():
        if field.is_extension:
            msg.ClearExtension(field)
        elif field.message_type is not None:
            if field.is_repeated:
                for item in value:
                    strip_extensions(item)
            else:
                strip_extensions(value)
    msg.DiscardUnknownFields()


def clear_empty_options(msg: Message) -> None:
    """An options message left empty by the stripping is removed, so the descriptor says nothing."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value if field.is_repeated else [value]
        for item in items:
            clear_empty_options(item)
        if field.name == "options" and not field.is_repeated and not value.ListFields():
            msg.ClearField(field.name)


def main() -> int:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    out = descriptor_pb2.FileDescriptorSet()
    for name in closure():
        if name.startswith(FROM_RUNTIME) or name.startswith(ANNOTATIONS):
            continue
        fdp = descriptor_pb2.FileDescriptorProto()
        pool.FindFileByName(name).CopyToProto(fdp)
        kept = [d for d in fdp.dependency if not d.startswith(ANNOTATIONS)]
        del fdp.dependency[:]
        fdp.dependency.extend(kept)
        del fdp.public_dependency[:]  # none in this closure; indexes would shift with the removals
        del fdp.weak_dependency[:]
        strip_extensions(fdp)
        clear_empty_options(fdp)
        out.file.append(fdp)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(out.SerializeToString(deterministic=True))
    for f in out.file:
        print(f.name)
    print(f"{OUT.relative_to(ROOT)}: {len(out.file)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
