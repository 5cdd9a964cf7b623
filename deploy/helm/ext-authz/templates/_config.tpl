{{/*
ext-authz's config.yaml: the values' `config` (policy and identity settings) plus the keys that depend on
how the chart deploys it. Every path named here is a volume the Deployment mounts (templates/_pod.tpl).
*/}}

{{- define "ext-authz.paths" -}}
config: /etc/ext-authz/config/config.yaml
checkSocket: /run/ext-authz/check.sock
adminSocket: /run/ext-authz-admin/admin.sock
sqlite: /var/lib/ext-authz/state.db
bundles: /etc/ext-authz/bundles
checkTls: /etc/ext-authz/check-tls
istioCa: /etc/ext-authz/istio-ca
redisAuth: /etc/ext-authz/redis-auth
sentinelAuth: /etc/ext-authz/sentinel-auth
redisCa: /etc/ext-authz/redis-ca
hmac: /etc/ext-authz/state-hmac
envoyAdminSocket: /run/envoy/admin.sock
{{- end -}}

{{- define "ext-authz.trustDomains" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- $tds := dict -}}
{{- if $v.istio.enabled -}}
{{- $_ := set $tds $v.istio.meshTrustDomain (dict "x509_bundle" (printf "%s/root-cert.pem" $p.istioCa)) -}}
{{- else -}}
{{- if $v.spiffe.workloadApi -}}
{{- range $td := prepend $v.spiffe.federatedTrustDomains $v.spiffe.trustDomain -}}
{{- $_ := set $tds $td (dict "workload_api" (printf "unix://%s" $v.spiffe.socketPath)) -}}
{{- end -}}
{{- end -}}
{{- range $td, $b := $v.spiffe.bundles.trustDomains -}}
{{- if hasKey $tds $td -}}
{{- fail (printf "spiffe.bundles.trustDomains.%s: this trust domain's bundles already come from the Workload API (bundles never mix)" $td) -}}
{{- end -}}
{{- $entry := dict -}}
{{- if $v.spiffe.bundles.existingConfigMap -}}
{{- if $b.x509Key }}{{ $_ := set $entry "x509_bundle" (printf "%s/%s" $p.bundles $b.x509Key) }}{{ end -}}
{{- if $b.jwtKey }}{{ $_ := set $entry "jwt_bundle" (printf "%s/%s" $p.bundles $b.jwtKey) }}{{ end -}}
{{- else -}}
{{- if $b.x509 }}{{ $_ := set $entry "x509_bundle" (printf "%s/%s.x509.pem" $p.bundles $td) }}{{ end -}}
{{- if $b.jwt }}{{ $_ := set $entry "jwt_bundle" (printf "%s/%s.jwt.json" $p.bundles $td) }}{{ end -}}
{{- end -}}
{{- if not $entry -}}
{{- fail (printf "spiffe.bundles.trustDomains.%s: give x509 and/or jwt (or x509Key/jwtKey with existingConfigMap)" $td) -}}
{{- end -}}
{{- $_ := set $tds $td $entry -}}
{{- end -}}
{{- end -}}
{{- if not $tds -}}
{{- fail "no trust domain: turn spiffe.workloadApi on or give spiffe.bundles.trustDomains" -}}
{{- end -}}
{{- toYaml $tds -}}
{{- end -}}

{{- define "ext-authz.config" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- range $key := list "listen" "check" "http_listen" "admin_listen" "state" "trust_domains" "mtls" -}}
{{- if hasKey $v.config $key -}}
{{- fail (printf "config.%s is set by the chart from the deployment values (see values.yaml), not in config" $key) -}}
{{- end -}}
{{- end -}}
{{- $cfg := deepCopy $v.config -}}
{{- $tds := include "ext-authz.trustDomains" . | fromYaml -}}
{{- $check := dict -}}
{{- $mtls := dict "source" "certificate" -}}
{{- if eq $v.mode "sidecar" -}}
{{- $_ := set $cfg "listen" (printf "unix://%s" $p.checkSocket) -}}
{{- $_ := set $check "socket_mode" "0660" -}}
{{- else if $v.istio.enabled -}}
{{- /* Behind its own Istio sidecar: Istio mTLS (PeerAuthentication STRICT) and an ALLOW policy on this
       port admit only istio.allowedPrincipals; the sidecar forwards to the pod IP, hence 0.0.0.0. */ -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%v" $v.ports.check) -}}
{{- $_ := set $check "plaintext" true -}}
{{- $_ := set $mtls "source" "principal" -}}
{{- else if include "ext-authz.terminator" . -}}
{{- /* The pod's Envoy terminates the callers' mTLS, admits only check.allowedSpiffeIds, and forwards each
       Check over this socket (in an emptyDir only Envoy and ext-authz mount): native, as in a sidecar. */ -}}
{{- if not $v.check.allowedSpiffeIds -}}
{{- fail "check.allowedSpiffeIds is required in shared mode: the SPIFFE IDs of the Envoys that may call Check" -}}
{{- end -}}
{{- if and (not (include "ext-authz.workloadApi" .)) (not $v.check.tls.existingSecret) -}}
{{- fail "check.tls.existingSecret is required in shared mode without the Workload API: the Check server certificate the pod's Envoy presents" -}}
{{- end -}}
{{- $_ := set $cfg "listen" (printf "unix://%s" $p.checkSocket) -}}
{{- $_ := set $check "socket_mode" "0660" -}}
{{- else -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%v" $v.ports.check) -}}
{{- if include "ext-authz.workloadApi" . -}}
{{- $_ := set $check "tls" (dict "workload_api" (printf "unix://%s" $v.spiffe.socketPath)) -}}
{{- else -}}
{{- $_ := required "check.tls.existingSecret is required in shared mode without the Workload API: ext-authz's Check server certificate" $v.check.tls.existingSecret -}}
{{- $_ := set $check "tls" (dict "cert" (printf "%s/tls.crt" $p.checkTls) "key" (printf "%s/tls.key" $p.checkTls)) -}}
{{- end -}}
{{- if not $v.check.allowedSpiffeIds -}}
{{- fail "check.allowedSpiffeIds is required in shared mode: the SPIFFE IDs of the Envoys that may call Check" -}}
{{- end -}}
{{- $_ := set $check "allowed_spiffe_ids" $v.check.allowedSpiffeIds -}}
{{- end -}}
{{- $_ := set $cfg "check" $check -}}
{{- $_ := set $cfg "mtls" $mtls -}}
{{- $_ := set $cfg "http_listen" (printf "0.0.0.0:%v" $v.ports.http) -}}
{{- $_ := set $cfg "admin_listen" (printf "unix://%s" $p.adminSocket) -}}
{{- if eq (include "ext-authz.stateBackend" .) "redis" -}}
{{- $state := dict "url" (include "ext-authz.redisUrl" .) "password_file" (printf "%s/password" $p.redisAuth) "hmac_key_file" (printf "%s/hmac-key" $p.hmac) -}}
{{- if $v.redis.auth.username }}{{ $_ := set $state "username" $v.redis.auth.username }}{{ end -}}
{{- if and (not $v.redis.deploy) $v.redis.external.sentinels }}{{ $_ := set $state "sentinels" $v.redis.external.sentinels }}{{ end -}}
{{- if include "ext-authz.sentinelAuth" . }}{{ $_ := set $state "sentinel_password_file" (printf "%s/password" $p.sentinelAuth) }}{{ end -}}
{{- if $v.state.waitReplicas }}{{ $_ := set $state "wait_replicas" $v.state.waitReplicas }}{{ $_ := set $state "wait_timeout" $v.state.waitTimeout }}{{ end -}}
{{- if include "ext-authz.redisCaSource" . -}}
{{- $_ := set $state "tls" (dict "ca" (printf "%s/ca.crt" $p.redisCa)) -}}
{{- end -}}
{{- $_ := set $cfg "state" $state -}}
{{- else -}}
{{- $_ := set $cfg "state" (printf "sqlite://%s" $p.sqlite) -}}
{{- end -}}
{{- $_ := set $cfg "trust_domains" $tds -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
Where ext-authz's Redis CA comes from, as "secret NAME KEY" / "configMap NAME KEY", or nothing (the system's
CAs, an external Redis with a public certificate).
*/}}
{{- define "ext-authz.redisCaSource" -}}
{{- if .Values.redis.deploy -}}
secret {{ include "ext-authz.redisTlsSecret" . }} ca.crt
{{- else if and .Values.redis.external.tls.enabled .Values.redis.external.tls.caSecret -}}
secret {{ .Values.redis.external.tls.caSecret }} {{ .Values.redis.external.tls.caKey }}
{{- else if and .Values.redis.external.tls.enabled .Values.redis.external.tls.caConfigMap -}}
configMap {{ .Values.redis.external.tls.caConfigMap }} {{ .Values.redis.external.tls.caKey }}
{{- end -}}
{{- end -}}
