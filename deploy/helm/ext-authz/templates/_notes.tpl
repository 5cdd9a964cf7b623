{{/* What NOTES.txt prints after an install (a named template, so that tests can render it). */}}
{{- define "ext-authz.notes" -}}
{{- $full := include "ext-authz.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $sa := include "ext-authz.serviceAccountName" . -}}
ext-authz {{ .Chart.AppVersion }} is installed as {{ $full }} in {{ $ns }} (mode {{ .Values.mode }}).

{{- if not .Values.istio.enabled }}

SPIRE: the pods take their identity from the SPIRE agent through the SPIFFE CSI driver
({{ .Values.spiffe.csiDriver }}, socket {{ .Values.spiffe.socketPath }}). They get an X509-SVID and
bundles only if a registration entry matches them: with the SPIRE controller manager, a ClusterSPIFFEID
whose podSelector/namespaceSelector covers them, e.g. the default template gives
    spiffe://{{ .Values.spiffe.trustDomain }}/ns/{{ $ns }}/sa/{{ $sa }}
{{- if eq .Values.mode "sidecar" }}
Until then Envoy's mTLS listener waits for its certificate (Envoy is not Ready).
{{- end }}
{{- if include "ext-authz.workloadApi" . }}
ext-authz starts after 10 s without them and refuses every SVID until they come: look for
"has no bundle for trust domain" or "does this workload have a registration entry?" in its log.
{{- end }}
{{- end }}

{{- if eq .Values.mode "sidecar" }}

Clients reach the app through Envoy's mTLS listener (client X509-SVIDs required):
    https://{{ $full }}.{{ $ns }}.svc:443   (container port {{ .Values.envoy.ports.mtls }})
Envoy asks ext-authz over the unix socket /run/ext-authz/check.sock (Envoy and ext-authz only).
{{- else if .Values.istio.enabled }}

Istio: register the extension provider in istiod's mesh config (helm upgrade istiod istio/istiod
-n istio-system --reuse-values -f deploy/istio/istiod-values.yaml), with this release's service:
    meshConfig:
      extensionProviders:
        - name: {{ .Values.istio.provider }}
          envoyExtAuthzGrpc:
            service: {{ $full }}.{{ $ns }}.svc.{{ .Values.clusterDomain }}
            port: {{ .Values.ports.check }}
            timeout: 0.5s
            failOpen: false
            statusOnError: "503"
ext-authz trusts the principal Istio's sidecar verified (mtls.source: principal) against the mesh root
(ConfigMap {{ .Values.istio.rootCertConfigMap }}, trust domain {{ .Values.istio.meshTrustDomain }}). It
listens in plaintext behind its own sidecar: PeerAuthentication {{ $full }} (STRICT) and
AuthorizationPolicy {{ $full }}-callers admit only these principals to port {{ .Values.ports.check }}:
{{- range .Values.istio.allowedPrincipals }}
    {{ . }}
{{- end }}
Label the pods of those workloads ext-authz/client=true (or set networkPolicy.checkClients) so the
NetworkPolicy lets them in too.
{{- else }}

Envoys call Check at {{ $full }}-replicas.{{ $ns }}.svc:{{ .Values.ports.check }} (headless: use an Envoy cluster of
type STRICT_DNS so Checks spread over the replicas; {{ $full }}.{{ $ns }}.svc is the one-address Service)
with gRPC over HTTP/2 and mTLS, presenting an X509-SVID among check.allowedSpiffeIds:
{{- range .Values.check.allowedSpiffeIds }}
    {{ . }}
{{- end }}
{{- if include "ext-authz.workloadApi" . }}
and verifying ext-authz's own X509-SVID (from the Workload API), e.g. spiffe://{{ .Values.spiffe.trustDomain }}/ns/{{ $ns }}/sa/{{ $sa }}.
{{- else }}
and verifying ext-authz's certificate from Secret {{ .Values.check.tls.existingSecret }}.
{{- end }}
{{- if include "ext-authz.terminator" . }}
In each pod an Envoy terminates that mTLS (check.terminator: envoy) and forwards to ext-authz over a unix
socket; a caller not on the list is refused in the handshake.
{{- end }}
Label those Envoys' pods ext-authz/client=true (or set networkPolicy.checkClients).
{{- end }}

{{- if eq (include "ext-authz.stateBackend" .) "redis" }}

State: Redis at {{ include "ext-authz.redisUrl" . }} (AUTH from Secret {{ include "ext-authz.redisAuthSecret" . }},
records under the HMAC key in Secret {{ include "ext-authz.hmacSecret" . }}).
{{- if and (not .Values.redis.deploy) (not .Values.redis.external.tls.enabled) }}
WARNING: redis.external.tls.enabled is false: the password and every record cross the network in clear.
{{- end }}
{{- else }}

State: SQLite in each pod's emptyDir (revocations, grants and exceptions are per pod and end with it:
an admin command below changes one pod only). Set state.backend: redis to share them.
{{- end }}

Health and metrics: GET :{{ .Values.ports.http }}/readyz, /healthz, /metrics on each ext-authz container.
Admin API (revoke, grant, exception, signal, tail) inside the ext-authz container:
    kubectl -n {{ $ns }} exec deploy/{{ $full }} -c ext-authz -- ext-authz revocations --config /etc/ext-authz/config/config.yaml
{{- end -}}
