{{/*
Envoy's bootstrap for mode shared with check.terminator envoy (rendered into the RELEASE-envoy ConfigMap).
The callers (Envoys elsewhere) reach this pod's `check` port over mTLS: this Envoy verifies each one's
X509-SVID against its trust domain's bundle, admits only check.allowedSpiffeIds (a handshake with any
other certificate, or none, fails), and forwards every Check over HTTP/2 on the unix socket in the emptyDir
only Envoy and ext-authz mount, where ext-authz serves it on the native transport. With the Workload API
the server certificate and the bundles come over SDS from the SPIRE agent; without it, from
check.tls.existingSecret and spiffe.bundles (X.509 bundles as PEM).
*/}}
{{- define "ext-authz.terminatorConfig" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- $sds := printf "{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}" -}}
{{- $workloadApi := include "ext-authz.workloadApi" . -}}
{{- /* The largest Check ext-authz could accept (its limits' headers and body, and room for the rest), as
       its grpcio transport bounds it: anything larger is refused here, before native would read it whole. */ -}}
{{- $limits := $v.config.limits | default dict -}}
{{- $headerBytes := hasKey $limits "max_header_bytes" | ternary $limits.max_header_bytes 98304 -}}
{{- $bodyBytes := hasKey $limits "max_body_bytes" | ternary $limits.max_body_bytes 8192 -}}
{{- $maxRequest := add $headerBytes $bodyBytes 65536 -}}
node: {id: {{ include "ext-authz.fullname" . | quote }}, cluster: {{ include "ext-authz.fullname" . | quote }}}
# The admin interface is a unix socket in an emptyDir only the Envoy container mounts (not on the network).
admin:
  address: {pipe: {path: {{ $p.envoyAdminSocket }}, mode: 384}}   # 0600
# Connections are capped; so is the heap that buffered Checks could fill: near envoy.maxHeapBytes (below
# the container's memory limit) it gives memory back, then stops accepting requests (503, fail closed)
# rather than being killed with every connection it holds.
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: {{ $v.envoy.maxDownstreamConnections }}
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: {{ int64 $v.envoy.maxHeapBytes }}
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.9}}]
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.95}}]
static_resources:
  listeners:
  - name: check
    address: {socket_address: {address: 0.0.0.0, port_value: {{ $v.ports.check }}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            {{- if $workloadApi }}
            tls_certificate_sds_secret_configs:
            - name: {{ $v.envoy.sds.svidName | quote }}
              sds_config: {{ $sds }}
            # Each trust domain by its own bundle (from the agent), and only these callers.
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                {{- range $v.check.allowedSpiffeIds }}
                - {san_type: URI, matcher: {exact: {{ . | quote }}}}
                {{- end }}
              validation_context_sds_secret_config:
                name: {{ $v.envoy.sds.validationContextName | quote }}
                sds_config: {{ $sds }}
            {{- else }}
            # From the Secret's files, over file-based SDS: re-read when Kubernetes swaps the Secret's
            # files (a renewed certificate is served without a restart).
            tls_certificate_sds_secret_configs:
            - name: check_tls
              sds_config: {resource_api_version: V3, path_config_source: {path: /etc/envoy/check-tls.yaml}}
            validation_context:
              match_typed_subject_alt_names:
              {{- range $v.check.allowedSpiffeIds }}
              - {san_type: URI, matcher: {exact: {{ . | quote }}}}
              {{- end }}
              # Each trust domain by its own bundle (Envoy's SPIFFE validator).
              custom_validator_config:
                name: envoy.tls.cert_validator.spiffe
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig
                  trust_domains:
                  {{- range $td, $b := include "ext-authz.trustDomains" . | fromYaml }}
                  {{- if $b.x509_bundle }}
                  - {name: {{ $td | quote }}, trust_bundle: {filename: {{ $b.x509_bundle }}}}
                  {{- end }}
                  {{- end }}
            {{- end }}
      # A connection that has not finished its handshake within 5 s is closed: one that proves nothing
      # holds no slot for long.
      transport_socket_connect_timeout: 5s
      filters:
      # The allow-list once more, over every URI SAN at once: they must be exactly one allowed SPIFFE ID.
      # The validator picks a certificate's trust domain from its first URI SAN, and the SAN matchers pass
      # if any SAN matches: a CA of another trust domain this pod trusts (federated) could otherwise put
      # an allowed ID second.
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: check_callers
          matcher:
            matcher_tree:
              input:
                name: uri_sans
                typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput}
              exact_match_map:
                map:
                  {{- range $v.check.allowedSpiffeIds }}
                  {{ . | quote }}: {action: {name: allow, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: allow, action: ALLOW}}}
                  {{- end }}
            on_no_match: {action: {name: deny, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: deny, action: DENY}}}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: check
          codec_type: HTTP2
          http2_protocol_options: {max_concurrent_streams: 100}
          # A Check is buffered whole (below): one not received within 5 s is dropped, so an allowed
          # caller cannot hold streams, and their memory, for the idle timeout.
          request_timeout: 5s
          # Nothing a caller says about certificates is passed on.
          forward_client_cert_details: SANITIZE
          route_config:
            name: check
            virtual_hosts:
            - name: check
              domains: ["*"]
              routes:
              - match: {prefix: /envoy.service.auth.v3.Authorization/, grpc: {}}
                route: {cluster: ext_authz, timeout: {{ $v.envoy.checkTimeout }}}
              - match: {prefix: /grpc.health.v1.Health/, grpc: {}}
                route: {cluster: ext_authz, timeout: {{ $v.envoy.checkTimeout }}}
          http_filters:
          # A Check larger than ext-authz's limits could accept is refused here (413), whole requests only.
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: {{ $maxRequest }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  # Readiness for kubelet, as in the sidecar's config: GET /ready is the admin interface's /ready. Outside
  # the connection cap, so connections to the check port cannot make the pod look not ready.
  {{- include "ext-authz.envoyReadyListener" (dict "root" . "terminator" true) | nindent 2 }}
  clusters:
  {{- include "ext-authz.envoyCheckCluster" . | nindent 2 }}
  {{- if $workloadApi }}
  {{- include "ext-authz.envoySpireCluster" . | nindent 2 }}
  {{- end }}
  {{- include "ext-authz.envoyAdminCluster" . | nindent 2 }}
{{- end -}}

{{/* The file-based SDS resource for the terminator's certificate (without the Workload API): the
Secret's files, watched through the directory Kubernetes swaps atomically on an update. */}}
{{- define "ext-authz.terminatorCertificate" -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: check_tls
  tls_certificate:
    certificate_chain: {filename: {{ $p.checkTls }}/tls.crt}
    private_key: {filename: {{ $p.checkTls }}/tls.key}
    watched_directory: {path: {{ $p.checkTls }}}
{{- end -}}
