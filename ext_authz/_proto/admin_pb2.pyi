from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(_message.Message):
    __slots__ = ("hosts", "paths", "methods")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("id", "kind", "value", "reason", "created_by", "created_at", "expires_at", "source", "ref", "issued_before", "ended_at", "ended_by", "end_reason", "also", "unmatched")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    ALSO_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    value: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float
    source: str
    ref: str
    issued_before: float
    ended_at: float
    ended_by: str
    end_reason: str
    also: _containers.RepeatedScalarFieldContainer[str]
    unmatched: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., source: _Optional[str] = ..., ref: _Optional[str] = ..., issued_before: _Optional[float] = ..., ended_at: _Optional[float] = ..., ended_by: _Optional[str] = ..., end_reason: _Optional[str] = ..., also: _Optional[_Iterable[str]] = ..., unmatched: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("kind", "value", "reason", "duration_seconds", "allow_unknown")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    reason: str
    duration_seconds: float
    allow_unknown: bool
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., allow_unknown: _Optional[bool] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revocation", "existing")
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    revocation: Revocation
    existing: bool
    def __init__(self, revocation: _Optional[_Union[Revocation, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class UnrevokeRequest(_message.Message):
    __slots__ = ("id", "reason", "kind", "value")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    kind: str
    value: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ..., kind: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class UnrevokeResponse(_message.Message):
    __slots__ = ("revocation", "revocations")
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocation: Revocation
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocation: _Optional[_Union[Revocation, _Mapping]] = ..., revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ("include_expired", "kind")
    INCLUDE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    include_expired: bool
    kind: str
    def __init__(self, include_expired: _Optional[bool] = ..., kind: _Optional[str] = ...) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("id", "principal", "scope", "not_before", "not_after", "reason", "approver", "created_by", "created_at", "ended_at", "ended_by", "ticket", "approved_at", "end_reason", "unmatched")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    principal: str
    scope: Scope
    not_before: float
    not_after: float
    reason: str
    approver: str
    created_by: str
    created_at: float
    ended_at: float
    ended_by: str
    ticket: str
    approved_at: float
    end_reason: str
    unmatched: str
    def __init__(self, id: _Optional[str] = ..., principal: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., not_before: _Optional[float] = ..., not_after: _Optional[float] = ..., reason: _Optional[str] = ..., approver: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., ended_by: _Optional[str] = ..., ticket: _Optional[str] = ..., approved_at: _Optional[float] = ..., end_reason: _Optional[str] = ..., unmatched: _Optional[str] = ...) -> None: ...

class CreateGrantRequest(_message.Message):
    __slots__ = ("principal", "scope", "not_before", "duration_seconds", "reason", "approver", "ticket", "allow_unknown")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    principal: str
    scope: Scope
    not_before: float
    duration_seconds: float
    reason: str
    approver: str
    ticket: str
    allow_unknown: bool
    def __init__(self, principal: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., not_before: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., approver: _Optional[str] = ..., ticket: _Optional[str] = ..., allow_unknown: _Optional[bool] = ...) -> None: ...

class CreateGrantResponse(_message.Message):
    __slots__ = ("grant", "warnings")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ApproveGrantRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ApproveGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...

class EndGrantRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EndGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class Exception(_message.Message):
    __slots__ = ("id", "principal", "scope", "reason", "opened_by", "opened_at", "expires_at", "closed_at", "closed_by", "approved_by", "approved_at", "close_reason", "unmatched")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPENED_BY_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSE_REASON_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    principal: str
    scope: Scope
    reason: str
    opened_by: str
    opened_at: float
    expires_at: float
    closed_at: float
    closed_by: str
    approved_by: str
    approved_at: float
    close_reason: str
    unmatched: str
    def __init__(self, id: _Optional[str] = ..., principal: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., reason: _Optional[str] = ..., opened_by: _Optional[str] = ..., opened_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., closed_at: _Optional[float] = ..., closed_by: _Optional[str] = ..., approved_by: _Optional[str] = ..., approved_at: _Optional[float] = ..., close_reason: _Optional[str] = ..., unmatched: _Optional[str] = ...) -> None: ...

class OpenExceptionRequest(_message.Message):
    __slots__ = ("principal", "scope", "reason", "duration_seconds", "allow_unknown")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    principal: str
    scope: Scope
    reason: str
    duration_seconds: float
    allow_unknown: bool
    def __init__(self, principal: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., reason: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., allow_unknown: _Optional[bool] = ...) -> None: ...

class OpenExceptionResponse(_message.Message):
    __slots__ = ("exception",)
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    exception: Exception
    def __init__(self, exception: _Optional[_Union[Exception, _Mapping]] = ...) -> None: ...

class ApproveExceptionRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ApproveExceptionResponse(_message.Message):
    __slots__ = ("exception",)
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    exception: Exception
    def __init__(self, exception: _Optional[_Union[Exception, _Mapping]] = ...) -> None: ...

class CloseExceptionRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CloseExceptionResponse(_message.Message):
    __slots__ = ("exception",)
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    exception: Exception
    def __init__(self, exception: _Optional[_Union[Exception, _Mapping]] = ...) -> None: ...

class ListExceptionsRequest(_message.Message):
    __slots__ = ("include_closed",)
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    include_closed: bool
    def __init__(self, include_closed: _Optional[bool] = ...) -> None: ...

class ListExceptionsResponse(_message.Message):
    __slots__ = ("exceptions",)
    EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    exceptions: _containers.RepeatedCompositeFieldContainer[Exception]
    def __init__(self, exceptions: _Optional[_Iterable[_Union[Exception, _Mapping]]] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("subject_kind", "subject", "key", "value", "set_by", "set_at", "expires_at", "source", "ref", "unmatched")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    key: str
    value: str
    set_by: str
    set_at: float
    expires_at: float
    source: str
    ref: str
    unmatched: str
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[str] = ..., set_by: _Optional[str] = ..., set_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., source: _Optional[str] = ..., ref: _Optional[str] = ..., unmatched: _Optional[str] = ...) -> None: ...

class PutSignalRequest(_message.Message):
    __slots__ = ("subject_kind", "subject", "key", "value", "ttl_seconds", "reason", "allow_unknown")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    key: str
    value: str
    ttl_seconds: float
    reason: str
    allow_unknown: bool
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., allow_unknown: _Optional[bool] = ...) -> None: ...

class PutSignalResponse(_message.Message):
    __slots__ = ("signal",)
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    signal: Signal
    def __init__(self, signal: _Optional[_Union[Signal, _Mapping]] = ...) -> None: ...

class ListSignalsRequest(_message.Message):
    __slots__ = ("include_stale",)
    INCLUDE_STALE_FIELD_NUMBER: _ClassVar[int]
    include_stale: bool
    def __init__(self, include_stale: _Optional[bool] = ...) -> None: ...

class ListSignalsResponse(_message.Message):
    __slots__ = ("signals",)
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    def __init__(self, signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ...) -> None: ...

class DeleteSignalRequest(_message.Message):
    __slots__ = ("subject_kind", "subject", "key", "reason")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    key: str
    reason: str
    def __init__(self, subject_kind: _Optional[str] = ..., subject: _Optional[str] = ..., key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteSignalResponse(_message.Message):
    __slots__ = ("signal",)
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    signal: Signal
    def __init__(self, signal: _Optional[_Union[Signal, _Mapping]] = ...) -> None: ...

class ReleaseQuarantineRequest(_message.Message):
    __slots__ = ("principal", "reason")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    principal: str
    reason: str
    def __init__(self, principal: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseQuarantineResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "actor", "action", "kind", "record_id", "principal", "reason", "before_json", "after_json", "unmatched")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    at: float
    actor: str
    action: str
    kind: str
    record_id: str
    principal: str
    reason: str
    before_json: str
    after_json: str
    unmatched: str
    def __init__(self, id: _Optional[str] = ..., at: _Optional[float] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., kind: _Optional[str] = ..., record_id: _Optional[str] = ..., principal: _Optional[str] = ..., reason: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ..., unmatched: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "principal", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: float
    principal: str
    limit: int
    def __init__(self, since: _Optional[float] = ..., principal: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class WatchRevocationsRequest(_message.Message):
    __slots__ = ("replay_active",)
    REPLAY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    replay_active: bool
    def __init__(self, replay_active: _Optional[bool] = ...) -> None: ...

class RevocationEvent(_message.Message):
    __slots__ = ("op", "revocation", "at")
    OP_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    op: str
    revocation: Revocation
    at: float
    def __init__(self, op: _Optional[str] = ..., revocation: _Optional[_Union[Revocation, _Mapping]] = ..., at: _Optional[float] = ...) -> None: ...

class WatchDecisionsRequest(_message.Message):
    __slots__ = ("deny_only", "identity_glob")
    DENY_ONLY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_GLOB_FIELD_NUMBER: _ClassVar[int]
    deny_only: bool
    identity_glob: str
    def __init__(self, deny_only: _Optional[bool] = ..., identity_glob: _Optional[str] = ...) -> None: ...

class DecisionEvent(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class SharedSignalsStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SsfReceiverStatus(_message.Message):
    __slots__ = ("issuer", "delivery", "stream_id", "stream_status", "verified_at", "critical_subject_members")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_SUBJECT_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    delivery: str
    stream_id: str
    stream_status: str
    verified_at: float
    critical_subject_members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, issuer: _Optional[str] = ..., delivery: _Optional[str] = ..., stream_id: _Optional[str] = ..., stream_status: _Optional[str] = ..., verified_at: _Optional[float] = ..., critical_subject_members: _Optional[_Iterable[str]] = ...) -> None: ...

class SsfStreamStatus(_message.Message):
    __slots__ = ("stream_id", "audience", "delivery", "status", "status_reason", "queued", "delivered", "refused", "last_error_at", "last_error_status", "last_error", "last_error_description")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    audience: str
    delivery: str
    status: str
    status_reason: str
    queued: int
    delivered: int
    refused: _containers.ScalarMap[str, int]
    last_error_at: float
    last_error_status: int
    last_error: str
    last_error_description: str
    def __init__(self, stream_id: _Optional[str] = ..., audience: _Optional[str] = ..., delivery: _Optional[str] = ..., status: _Optional[str] = ..., status_reason: _Optional[str] = ..., queued: _Optional[int] = ..., delivered: _Optional[int] = ..., refused: _Optional[_Mapping[str, int]] = ..., last_error_at: _Optional[float] = ..., last_error_status: _Optional[int] = ..., last_error: _Optional[str] = ..., last_error_description: _Optional[str] = ...) -> None: ...

class SharedSignalsStatusResponse(_message.Message):
    __slots__ = ("configured", "receivers", "streams")
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    RECEIVERS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    configured: bool
    receivers: _containers.RepeatedCompositeFieldContainer[SsfReceiverStatus]
    streams: _containers.RepeatedCompositeFieldContainer[SsfStreamStatus]
    def __init__(self, configured: _Optional[bool] = ..., receivers: _Optional[_Iterable[_Union[SsfReceiverStatus, _Mapping]]] = ..., streams: _Optional[_Iterable[_Union[SsfStreamStatus, _Mapping]]] = ...) -> None: ...
