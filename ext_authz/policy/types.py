"""Typed declarations of what CEL conditions see, for checking expressions at load.

``request``, ``source``, ``identity``, ``signals``, ``grants`` and ``now`` are declared as messages
(built here as protobuf descriptors, no generated code) with exactly the fields the pipeline provides.
An expression that names an unknown variable or field fails to compile against them, so ``validate``
and every load refuse it with the position of the mistake. Evaluation itself runs on plain maps built
per Check (see engine.py); ``identity.claims`` is a JSON object (any key).

Keep the fields here and ``pipeline.activation`` / ``ANONYMOUS_IDENTITY`` in step: a test compiles a
reference to every key the pipeline provides.
"""

from __future__ import annotations

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2

__all__ = ["FIELDS", "TYPED_ENV"]

_PACKAGE = "ext_authz.cel.v1"
_F = descriptor_pb2.FieldDescriptorProto

# message -> [(field, type)]; a type is a scalar name, "map", "list:string", "struct" or a message name.
_CREDENTIAL = [
    ("authenticated", "bool"),
    ("kind", "string"),
    ("spiffe_id", "string"),
    ("trust_domain", "string"),
    ("path", "string"),
    ("subject", "string"),
    ("issuer", "string"),
    ("claims", "struct"),
    ("audiences", "list:string"),
    ("issued_at", "int64"),
    ("expires_at", "int64"),
    ("bound", "string"),  # a token bound to its holder, how: x5t#S256 (RFC 8705); else ""
]
FIELDS: dict[str, list[tuple[str, str]]] = {
    "Request": [
        ("method", "string"),
        ("path", "string"),
        ("host", "string"),
        ("scheme", "string"),
        ("protocol", "string"),
        ("headers", "map"),
        ("context_extensions", "map"),
    ],
    "Source": [("address", "string"), ("principal", "string")],
    "Credential": _CREDENTIAL,
    "Identity": [*_CREDENTIAL, ("kinds", "list:string"), ("x509", "Credential"), ("token", "Credential")],
    "Signals": [("device", "map"), ("workload", "map"), ("user", "map"), ("token", "map")],
    "Grant": [
        ("id", "string"),
        ("principal", "string"),
        ("reason", "string"),
        ("approver", "string"),
        ("not_after", "int64"),
    ],
}
_SCALARS = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int64": _F.TYPE_INT64}


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="ext_authz/cel/v1/types.proto", package=_PACKAGE, syntax="proto3"
    )
    fdp.dependency.append("google/protobuf/struct.proto")
    for name, fields in FIELDS.items():
        msg = fdp.message_type.add(name=name)
        for number, (field, typ) in enumerate(fields, start=1):
            fd = msg.field.add(name=field, number=number, label=_F.LABEL_OPTIONAL)
            if typ in _SCALARS:
                fd.type = _SCALARS[typ]
            elif typ == "list:string":
                fd.type, fd.label = _F.TYPE_STRING, _F.LABEL_REPEATED
            elif typ == "struct":
                fd.type, fd.type_name = _F.TYPE_MESSAGE, ".google.protobuf.Struct"
            elif typ == "map":
                entry = msg.nested_type.add(name=f"{field.title().replace('_', '')}Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                fd.type, fd.label = _F.TYPE_MESSAGE, _F.LABEL_REPEATED
                fd.type_name = f".{_PACKAGE}.{name}.{entry.name}"
            else:
                fd.type, fd.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{typ}"
    return fdp


def _env() -> cel.Env:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(struct_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(_file())

    def msg(name: str) -> cel.Type:
        return cel.Type(f"{_PACKAGE}.{name}")

    return cel.NewEnv(
        descriptor_pool=pool,
        variables={
            "request": msg("Request"),
            "source": msg("Source"),
            "identity": msg("Identity"),
            "signals": msg("Signals"),
            "grants": cel.Type.List(msg("Grant")),
            "now": cel.Type.TIMESTAMP,
        },
    )


TYPED_ENV = _env()
