{{/*
The pod template of the ext-authz Deployment, both modes. Volumes are mounted only where they are needed:
the Check socket's emptyDir into Envoy and ext-authz (never the app), the admin socket's emptyDir into
ext-authz alone, Envoy's admin socket's into Envoy alone, each Secret into ext-authz alone, read-only.
*/}}

{{- define "ext-authz.containerSecurityContext" -}}
{{- $sc := deepCopy .root.Values.securityContext -}}
{{- $_ := set $sc "runAsUser" .user -}}
{{- $_ := set $sc "runAsGroup" .group -}}
{{- $_ := set $sc "runAsNonRoot" true -}}
{{- toYaml $sc -}}
{{- end -}}

{{- define "ext-authz.podTemplate" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
{{- $envoy := include "ext-authz.envoy" . -}}
{{- $terminator := include "ext-authz.terminator" . -}}
{{- $redis := eq (include "ext-authz.stateBackend" .) "redis" -}}
{{- $caSource := include "ext-authz.redisCaSource" . -}}
{{- $ca := splitList " " $caSource -}}
metadata:
  labels:
    {{- include "ext-authz.versionLabels" . | nindent 4 }}
    {{- include "ext-authz.selectorLabels" . | nindent 4 }}
    {{- if $v.istio.enabled }}
    sidecar.istio.io/inject: "true"
    {{- end }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # ext-authz reloads config.yaml by itself, keeping the last good one; a changed config still rolls
    # the pods, so a new policy is validated (the init container) before any pod serves it.
    checksum/config: {{ include "ext-authz.config" . | sha256sum }}
    {{- if $envoy }}
    # Envoy reads its bootstrap once: a new one needs new pods. ext-authz reloads config.yaml by itself.
    checksum/envoy: {{ printf "%s%s" (include "ext-authz.podEnvoyConfig" .) (include "ext-authz.terminatorCertificate" .) | sha256sum }}
    {{- if and $terminator (include "ext-authz.bundleFiles" .) (not $v.spiffe.bundles.existingConfigMap) }}
    # ...and the callers' bundles it reads from files, at start (ext-authz reloads its own).
    checksum/bundles: {{ toJson $v.spiffe.bundles.trustDomains | sha256sum }}
    {{- end }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ext-authz.serviceAccountName" . }}
  # Nothing here talks to the Kubernetes API (SPIRE attests pods through the kubelet).
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml $v.topologySpreadConstraints | nindent 4 }}
  {{- else if not $sidecar }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "ext-authz.selectorLabels" . | nindent 10 }}
  {{- end }}
  {{- $native := and $sidecar $v.nativeSidecars }}
  {{- if or $v.validateConfig $native }}
  initContainers:
    {{- if $v.validateConfig }}
    # `ext-authz validate` on the rendered config and the files it names: a pod whose config does not
    # load never starts, so a bad policy rolled out by `helm upgrade` stops at the first new pod.
    - name: validate-config
      image: {{ include "ext-authz.image" (dict "image" $v.image "default" .Chart.AppVersion) }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: [validate, {{ $p.config }}]
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- include "ext-authz.containerSecurityContext" (dict "root" . "user" $v.runAsUser "group" $v.runAsGroup) | nindent 8 }}
      volumeMounts:
        {{- include "ext-authz.mounts" . | nindent 8 }}
    {{- end }}
    {{- if $native }}
    # ext-authz first: with its startup probe passed, Envoy starts, then the app.
    {{- include "ext-authz.authzContainer" (dict "root" . "native" true) | nindent 4 }}
    {{- include "ext-authz.envoyContainer" (dict "root" . "native" true) | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    {{- if $sidecar }}
    - name: app
      image: {{ include "ext-authz.image" (dict "image" $v.app.image "default" "") }}
      imagePullPolicy: {{ $v.app.image.pullPolicy }}
      {{- with $v.app.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.app.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.app.env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $v.app.resources | nindent 8 }}
      securityContext:
        {{- include "ext-authz.containerSecurityContext" (dict "root" . "user" $v.app.securityContext.runAsUser "group" $v.app.securityContext.runAsGroup) | nindent 8 }}
      {{- with $v.app.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.app.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- if not $native }}
    {{- include "ext-authz.envoyContainer" (dict "root" . "native" false) | nindent 4 }}
    {{- end }}
    {{- end }}
    {{- if $terminator }}
    {{- include "ext-authz.envoyContainer" (dict "root" . "native" false) | nindent 4 }}
    {{- end }}
    {{- if not $native }}
    {{- include "ext-authz.authzContainer" (dict "root" . "native" false) | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap: {name: {{ include "ext-authz.fullname" . }}-config}
    {{- if $envoy }}
    - name: envoy-config
      configMap: {name: {{ include "ext-authz.fullname" . }}-envoy}
    # The Check socket (mode 0660, group fsGroup): Envoy and ext-authz only.
    - name: check-socket
      emptyDir: {medium: Memory, sizeLimit: 1Mi}
    - name: envoy-admin
      emptyDir: {medium: Memory, sizeLimit: 1Mi}
    {{- end }}
    - name: admin-socket
      emptyDir: {medium: Memory, sizeLimit: 1Mi}
    - name: tmp
      emptyDir: {medium: Memory, sizeLimit: 16Mi}
    {{- if not $redis }}
    - name: state
      emptyDir: {sizeLimit: {{ $v.state.sqliteSizeLimit }}}
    {{- end }}
    {{- if include "ext-authz.csi" . }}
    # The SPIRE agent's Workload API socket, from the SPIFFE CSI driver.
    - name: spiffe-workload-api
      csi: {driver: {{ $v.spiffe.csiDriver }}, readOnly: true}
    {{- end }}
    {{- if include "ext-authz.bundleFiles" . }}
    - name: bundles
      configMap: {name: {{ include "ext-authz.bundlesConfigMap" . }}}
    {{- end }}
    {{- if and (not $sidecar) (not $v.istio.enabled) (not (include "ext-authz.workloadApi" .)) }}
    - name: check-tls
      secret:
        secretName: {{ $v.check.tls.existingSecret }}
        defaultMode: 0440
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
    {{- end }}
    {{- if $v.istio.enabled }}
    # istiod writes the mesh root into this ConfigMap in every namespace (and rewrites it on rotation).
    - name: istio-ca
      configMap:
        name: {{ $v.istio.rootCertConfigMap }}
        items:
          - {key: root-cert.pem, path: root-cert.pem}
    {{- end }}
    {{- if $redis }}
    - name: state-hmac
      secret:
        secretName: {{ include "ext-authz.hmacSecret" . }}
        defaultMode: 0440
        items:
          - {key: {{ $v.state.hmacKey.key }}, path: hmac-key}
    - name: redis-auth
      secret:
        secretName: {{ include "ext-authz.redisAuthSecret" . }}
        defaultMode: 0440
        items:
          - {key: {{ $v.redis.auth.key }}, path: password}
    {{- with include "ext-authz.sentinelAuth" . }}
    - name: sentinel-auth
      secret:
        secretName: {{ . }}
        defaultMode: 0440
        items:
          - {key: {{ $v.redis.external.sentinelAuth.key }}, path: password}
    {{- end }}
    {{- if $caSource }}
    # Only the CA: Redis's own key stays in the Redis pod.
    - name: redis-ca
      {{ index $ca 0 }}:
        {{- if eq (index $ca 0) "secret" }}
        secretName: {{ index $ca 1 }}
        {{- else }}
        name: {{ index $ca 1 }}
        {{- end }}
        defaultMode: 0444
        items:
          - {key: {{ index $ca 2 }}, path: ca.crt}
    {{- end }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* What the ext-authz container mounts: the validating init container mounts the same. */}}
{{- define "ext-authz.mounts" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
{{- $redis := eq (include "ext-authz.stateBackend" .) "redis" -}}
{{- $caSource := include "ext-authz.redisCaSource" . -}}
- {name: config, mountPath: {{ dir $p.config }}, readOnly: true}
{{- if include "ext-authz.envoy" . }}
- {name: check-socket, mountPath: {{ dir $p.checkSocket }}}
{{- end }}
- {name: admin-socket, mountPath: {{ dir $p.adminSocket }}}
- {name: tmp, mountPath: /tmp}
{{- if not $redis }}
- {name: state, mountPath: {{ dir $p.sqlite }}}
{{- end }}
{{- if include "ext-authz.workloadApi" . }}
- {name: spiffe-workload-api, mountPath: {{ include "ext-authz.socketDir" . }}, readOnly: true}
{{- end }}
{{- if include "ext-authz.bundleFiles" . }}
- {name: bundles, mountPath: {{ $p.bundles }}, readOnly: true}
{{- end }}
{{- if and (not $sidecar) (not $v.istio.enabled) (not (include "ext-authz.workloadApi" .)) (not (include "ext-authz.terminator" .)) }}
- {name: check-tls, mountPath: {{ $p.checkTls }}, readOnly: true}
{{- end }}
{{- if $v.istio.enabled }}
- {name: istio-ca, mountPath: {{ $p.istioCa }}, readOnly: true}
{{- end }}
{{- if $redis }}
- {name: state-hmac, mountPath: {{ $p.hmac }}, readOnly: true}
- {name: redis-auth, mountPath: {{ $p.redisAuth }}, readOnly: true}
{{- if include "ext-authz.sentinelAuth" . }}
- {name: sentinel-auth, mountPath: {{ $p.sentinelAuth }}, readOnly: true}
{{- end }}
{{- if $caSource }}
- {name: redis-ca, mountPath: {{ $p.redisCa }}, readOnly: true}
{{- end }}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ext-authz.envoyContainer" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $p := include "ext-authz.paths" $root | fromYaml -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
- name: envoy
  {{- if .native }}
  restartPolicy: Always  # a native sidecar (Kubernetes 1.29+): up before the app, down after
  {{- end }}
  image: {{ include "ext-authz.image" (dict "image" $v.envoy.image "default" "") }}
  imagePullPolicy: {{ $v.envoy.image.pullPolicy }}
  command: [envoy]
  args: [-c, /etc/envoy/envoy.yaml, --log-level, {{ $v.envoy.logLevel }}, --disable-hot-restart]
  ports:
    {{- if $sidecar }}
    - {name: mtls, containerPort: {{ $v.envoy.ports.mtls }}}
    {{- else }}
    - {name: check, containerPort: {{ $v.ports.check }}}
    {{- end }}
    - {name: envoy-ready, containerPort: {{ $v.envoy.ports.ready }}}
  resources:
    {{- toYaml $v.envoy.resources | nindent 8 }}
  securityContext:
    {{- include "ext-authz.containerSecurityContext" (dict "root" $root "user" $v.envoy.runAsUser "group" $v.envoy.runAsUser) | nindent 8 }}
  # The `ready` listener (0.0.0.0) proxies GET /ready to the admin socket's /ready.
  readinessProbe:
    httpGet: {path: /ready, port: envoy-ready}
    periodSeconds: 5
    failureThreshold: 3
  volumeMounts:
    - {name: envoy-config, mountPath: /etc/envoy, readOnly: true}
    - {name: check-socket, mountPath: {{ dir $p.checkSocket }}}
    - {name: envoy-admin, mountPath: {{ dir $p.envoyAdminSocket }}}
    {{- if or $sidecar (include "ext-authz.workloadApi" $root) }}
    - {name: spiffe-workload-api, mountPath: {{ include "ext-authz.socketDir" $root }}, readOnly: true}
    {{- else }}
    # The terminator's server certificate and the callers' bundles, from files.
    - {name: check-tls, mountPath: {{ $p.checkTls }}, readOnly: true}
    {{- if include "ext-authz.bundleFiles" $root }}
    - {name: bundles, mountPath: {{ $p.bundles }}, readOnly: true}
    {{- end }}
    {{- end }}
{{- end -}}

{{- define "ext-authz.authzContainer" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $p := include "ext-authz.paths" $root | fromYaml -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
- name: ext-authz
  {{- if .native }}
  restartPolicy: Always  # a native sidecar (Kubernetes 1.29+): up before the app, down after
  {{- end }}
  image: {{ include "ext-authz.image" (dict "image" $v.image "default" $root.Chart.AppVersion) }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: [serve, --config, {{ $p.config }}{{ range $v.extraArgs }}, {{ . | quote }}{{ end }}]
  {{- with $v.extraEnv }}
  env:
    {{- toYaml . | nindent 8 }}
  {{- end }}
  ports:
    {{- if not (include "ext-authz.envoy" $root) }}
    - {name: check, containerPort: {{ $v.ports.check }}}
    {{- end }}
    - {name: http, containerPort: {{ $v.ports.http }}}
  resources:
    {{- toYaml $v.resources | nindent 8 }}
  securityContext:
    {{- include "ext-authz.containerSecurityContext" (dict "root" $root "user" $v.runAsUser "group" $v.runAsGroup) | nindent 8 }}
  # http_listen is 0.0.0.0:{{ $v.ports.http }}: /readyz is 200 once config, state and policy are loaded
  # (after waiting up to 10 s for the Workload API's first answer), and stays 200 ("degraded") if
  # Redis is down, since Checks go on with the last snapshot. The Check port cannot be probed: a unix
  # socket (sidecar) or TLS with client certificates (shared), which kubelet's grpc probe does not speak.
  startupProbe:
    httpGet: {path: /readyz, port: http}
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    httpGet: {path: /readyz, port: http}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: http}
    periodSeconds: 10
    failureThreshold: 3
  volumeMounts:
    {{- include "ext-authz.mounts" $root | nindent 8 }}
{{- end -}}
