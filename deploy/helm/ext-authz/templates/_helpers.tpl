{{/* Names, labels, images, and the decisions every template shares (mode, state backend, trust). */}}

{{- define "ext-authz.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ext-authz.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ext-authz.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels for every object; "ext-authz.selectorLabels" picks one component's pods. */}}
{{- define "ext-authz.labels" -}}
helm.sh/chart: {{ include "ext-authz.chart" . }}
app.kubernetes.io/name: {{ include "ext-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Pod labels: the selector labels plus the version labels (each key once). */}}
{{- define "ext-authz.versionLabels" -}}
helm.sh/chart: {{ include "ext-authz.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ext-authz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ext-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ext-authz
{{- end -}}

{{- define "ext-authz.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ext-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "ext-authz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ext-authz.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: pinned by tag, and by digest when one is given. */}}
{{- define "ext-authz.image" -}}
{{- $tag := .image.tag | default .default | toString -}}
{{- if or (not $tag) (eq $tag "latest") -}}
{{- fail (printf "image %s: pin a version tag (not %q)" .image.repository $tag) -}}
{{- end -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" $ref .image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* ---- Decisions, each made once here ---- */}}

{{- define "ext-authz.istio" -}}
{{- if .Values.istio.enabled -}}true{{- end -}}
{{- end -}}

{{/* "sqlite" or "redis". */}}
{{- define "ext-authz.stateBackend" -}}
{{- if .Values.state.backend -}}
{{- .Values.state.backend -}}
{{- else if eq .Values.mode "shared" -}}
redis
{{- else -}}
sqlite
{{- end -}}
{{- end -}}

{{/* ext-authz takes bundles (and in shared mode its Check certificate) from the Workload API. */}}
{{- define "ext-authz.workloadApi" -}}
{{- if and .Values.spiffe.workloadApi (not .Values.istio.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Shared mode without Istio, with an Envoy in each pod terminating the callers' mTLS (check.terminator). */}}
{{- define "ext-authz.terminator" -}}
{{- if and (eq .Values.mode "shared") (not .Values.istio.enabled) (eq .Values.check.terminator "envoy") -}}true{{- end -}}
{{- end -}}

{{/* An Envoy container in the pod: the sidecar's, or the shared mode's terminator. */}}
{{- define "ext-authz.envoy" -}}
{{- if or (eq .Values.mode "sidecar") (include "ext-authz.terminator" .) -}}true{{- end -}}
{{- end -}}

{{/* The pod's Envoy bootstrap: the sidecar's, or the terminator's. */}}
{{- define "ext-authz.podEnvoyConfig" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- include "ext-authz.envoyConfig" . -}}
{{- else -}}
{{- include "ext-authz.terminatorConfig" . -}}
{{- end -}}
{{- end -}}

{{/* Trust domains from bundle files (spiffe.bundles), without Istio. */}}
{{- define "ext-authz.bundleFiles" -}}
{{- if and .Values.spiffe.bundles.trustDomains (not .Values.istio.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "ext-authz.bundlesConfigMap" -}}
{{- .Values.spiffe.bundles.existingConfigMap | default (printf "%s-bundles" (include "ext-authz.fullname" .)) -}}
{{- end -}}

{{/* The SPIFFE CSI volume: Envoy's SDS in sidecar mode, ext-authz's Workload API when it uses it. */}}
{{- define "ext-authz.csi" -}}
{{- if or (eq .Values.mode "sidecar") (include "ext-authz.workloadApi" .) -}}true{{- end -}}
{{- end -}}

{{- define "ext-authz.socketDir" -}}
{{- dir .Values.spiffe.socketPath -}}
{{- end -}}

{{/* ---- Redis ---- */}}

{{- define "ext-authz.redisName" -}}
{{- printf "%s-redis" (include "ext-authz.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ext-authz.redisHost" -}}
{{- if and (not .Values.redis.deploy) .Values.redis.external.sentinels -}}
{{- required "redis.external.masterName names the Sentinel master" .Values.redis.external.masterName -}}
{{- else if .Values.redis.deploy -}}
{{- printf "%s.%s.svc" (include "ext-authz.redisName" .) .Release.Namespace -}}
{{- else -}}
{{- required "redis.external.host is required when redis.deploy is false" .Values.redis.external.host -}}
{{- end -}}
{{- end -}}

{{- define "ext-authz.redisTls" -}}
{{- if or .Values.redis.deploy .Values.redis.external.tls.enabled -}}true{{- end -}}
{{- end -}}

{{- define "ext-authz.redisUrl" -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "ext-authz.redisTls" .) "true") -}}
{{- if and (not .Values.redis.deploy) .Values.redis.external.sentinels -}}
{{- printf "%s://%s/%v" $scheme (include "ext-authz.redisHost" .) .Values.redis.db -}}
{{- else -}}
{{- $port := ternary 6379 .Values.redis.external.port .Values.redis.deploy -}}
{{- printf "%s://%s:%v/%v" $scheme (include "ext-authz.redisHost" .) $port .Values.redis.db -}}
{{- end -}}
{{- end -}}

{{/* The Sentinels' own password's Secret, when an external Redis's Sentinels ask for one. */}}
{{- define "ext-authz.sentinelAuth" -}}
{{- if and (eq (include "ext-authz.stateBackend" .) "redis") (not .Values.redis.deploy) .Values.redis.external.sentinels .Values.redis.external.sentinelAuth.existingSecret -}}
{{- .Values.redis.external.sentinelAuth.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "ext-authz.redisAuthSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if .Values.redis.deploy -}}
{{- printf "%s-redis-auth" (include "ext-authz.fullname" .) -}}
{{- else -}}
{{- fail "redis.auth.existingSecret is required with an external Redis: the chart cannot set its password" -}}
{{- end -}}
{{- end -}}

{{- define "ext-authz.redisTlsSecret" -}}
{{- .Values.redis.tls.existingSecret | default (printf "%s-redis-tls" (include "ext-authz.fullname" .)) -}}
{{- end -}}

{{- define "ext-authz.hmacSecret" -}}
{{- .Values.state.hmacKey.existingSecret | default (printf "%s-state-hmac" (include "ext-authz.fullname" .)) -}}
{{- end -}}

{{/*
A Secret value generated once: the value already in the cluster when there is one (`lookup`, so an
upgrade keeps passwords, keys and certificates), else a new one. `helm template` and `--dry-run` have no
cluster: they always show a fresh value.
*/}}
{{- define "ext-authz.existingSecretData" -}}
{{- $found := lookup "v1" "Secret" .namespace .name -}}
{{- if and $found $found.data -}}{{- toJson $found.data -}}{{- else -}}{}{{- end -}}
{{- end -}}

{{/* Checks across values, run first by every template that depends on them. */}}
{{- define "ext-authz.validate" -}}
{{- if not (has .Values.mode (list "sidecar" "shared")) }}
{{- fail (printf "mode: expected sidecar or shared, got %q" .Values.mode) }}
{{- end }}
{{- if and .Values.istio.enabled (ne .Values.mode "shared") }}
{{- fail "istio.enabled needs mode: shared (in the mesh, Istio's sidecar is the workload's Envoy)" }}
{{- end }}
{{- if not (has .Values.check.terminator (list "envoy" "ext-authz")) }}
{{- fail (printf "check.terminator: expected envoy or ext-authz, got %q" .Values.check.terminator) }}
{{- end }}
{{- if include "ext-authz.terminator" . }}
{{- $spire := prepend .Values.spiffe.federatedTrustDomains .Values.spiffe.trustDomain }}
{{- range .Values.check.allowedSpiffeIds }}
{{- $td := index (splitList "/" (trimPrefix "spiffe://" .)) 0 }}
{{- if and (include "ext-authz.workloadApi" $) (not (has $td $spire)) }}
{{- fail (printf "check.allowedSpiffeIds: %s is of trust domain %s, whose bundle the pod's Envoy does not get from SPIRE (spiffe.trustDomain, spiffe.federatedTrustDomains): it would be refused" . $td) }}
{{- end }}
{{- end }}
{{- if not (include "ext-authz.workloadApi" .) }}
{{- range $td, $b := .Values.spiffe.bundles.trustDomains }}
{{- if and $b.x509 (hasPrefix "{" (trim $b.x509)) }}
{{- fail (printf "spiffe.bundles.trustDomains.%s.x509: with check.terminator envoy the X.509 bundle is PEM (the pod's Envoy reads it), not SPIFFE bundle JSON" $td) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.redis.external.sentinelAuth.existingSecret (not .Values.redis.external.sentinels) }}
{{- fail "redis.external.sentinelAuth is the Sentinels' password: it needs redis.external.sentinels" }}
{{- end }}
{{- if and .Values.istio.enabled (not .Values.istio.allowedPrincipals) }}
{{- fail "istio.allowedPrincipals: name the Istio principals (TD/ns/NS/sa/SA) whose sidecars call Check" }}
{{- end }}
{{- if and (eq .Values.mode "shared") (eq (include "ext-authz.stateBackend" .) "sqlite") (gt (int .Values.replicas) 1) }}
{{- fail "state.backend sqlite with several shared replicas: each would hold its own revocations; use redis" }}
{{- end }}
{{- end -}}
