{{/*
Envoy's bootstrap for mode sidecar (rendered into the RELEASE-envoy ConfigMap). The workload's X509-SVID
and the validation context come over SDS from the SPIRE agent on the CSI-mounted Workload API socket;
every request on the mTLS listener is checked by ext-authz over the unix socket in the emptyDir that only
Envoy and ext-authz mount.
*/}}
{{- define "ext-authz.envoyConfig" -}}
{{- $v := .Values -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
{{- $sds := printf "{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: spire_agent}}]}}" -}}
node: {id: {{ include "ext-authz.fullname" . | quote }}, cluster: {{ include "ext-authz.fullname" . | quote }}}
# The admin interface is a unix socket in an emptyDir only the Envoy container mounts: not on the network,
# and not reachable from the app container either (a TCP admin port on 127.0.0.1 would be, since the pod
# shares one network namespace). Kubelet cannot reach it, so readiness goes through the `ready` listener.
admin:
  address: {pipe: {path: {{ $p.envoyAdminSocket }}, mode: 384}}   # 0600
# A bound on downstream connections (Envoy warns at start without one).
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: {{ $v.envoy.maxDownstreamConnections }}
static_resources:
  listeners:
  - name: mesh
    address: {socket_address: {address: 0.0.0.0, port_value: {{ $v.envoy.ports.mtls }}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: {{ $v.envoy.sds.svidName | quote }}
              sds_config: {{ $sds }}
            # Every trust domain by its own bundle (Envoy's SPIFFE validator, from the agent). Which SPIFFE
            # IDs may do what is ext-authz's policy, so no SAN matcher here.
            validation_context_sds_secret_config:
              name: {{ $v.envoy.sds.validationContextName | quote }}
              sds_config: {{ $sds }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mesh
          # x_spiffe_id must not pose as x-spiffe-id to an app that folds `_` into `-`.
          common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}
          strip_trailing_host_dot: true
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          # Replace any client XFCC with this hop's verified peer, chain included: ext-authz builds the
          # path to the root from these (untrusted) intermediates.
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {uri: true, chain: true}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] envoy listener=mesh \"%REQ(:METHOD)% %PATH(NQ)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% peer=%DOWNSTREAM_PEER_URI_SAN% decision_id=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)% reason=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)% request_id=%REQ(X-REQUEST-ID)%\n"
          route_config:
            name: mesh
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: {listener: mesh}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {cluster_name: ext_authz}
                timeout: {{ $v.envoy.checkTimeout }}
              include_peer_certificate: true
              failure_mode_allow: false
              status_on_error: {code: ServiceUnavailable}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  # Readiness for kubelet: GET /ready on 0.0.0.0 is proxied to the admin interface's /ready (200 once
  # Envoy is initialized and not draining, 503 otherwise), through the admin socket; anything else is 404.
  # Chosen over the health_check filter, which answers 200 as soon as its own listener is up, even while
  # the mTLS listener still waits for its SVID.
  {{- include "ext-authz.envoyReadyListener" (dict "root" . "terminator" false) | nindent 2 }}
  clusters:
  {{- include "ext-authz.envoyCheckCluster" . | nindent 2 }}
  {{- include "ext-authz.envoySpireCluster" . | nindent 2 }}
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{ $v.app.port }}}}}
  {{- include "ext-authz.envoyAdminCluster" . | nindent 2 }}
{{- end -}}

{{/*
What both of the pod's Envoy bootstraps (the sidecar's above, the terminator's in _terminator.tpl) have:
the readiness listener (the terminator's also serves its stats, and stands outside the connection cap),
the Check socket's cluster, the SPIRE agent's, and the admin socket's.
*/}}
{{- define "ext-authz.envoyReadyListener" -}}
{{- $v := .root.Values -}}
- name: ready
  address: {socket_address: {address: 0.0.0.0, port_value: {{ $v.envoy.ports.ready }}}}
  {{- if .terminator }}
  ignore_global_conn_limit: true
  {{- end }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ready
        route_config:
          name: ready
          virtual_hosts:
          - name: ready
            domains: ["*"]
            routes:
            - match: {path: /ready, headers: [{name: ":method", string_match: {exact: GET}}]}
              route: {cluster: envoy_admin, timeout: 2s}
            {{- if .terminator }}
            # ...and its stats for Prometheus: the callers it refused are counted here, not by ext-authz.
            - match: {path: /stats/prometheus, headers: [{name: ":method", string_match: {exact: GET}}]}
              route: {cluster: envoy_admin, timeout: 5s}
            {{- end }}
            - match: {prefix: "/"}
              direct_response: {status: 404}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- end -}}

{{- define "ext-authz.envoyCheckCluster" -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
- name: ext_authz
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: {http2_protocol_options: {}}
  load_assignment:
    cluster_name: ext_authz
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {pipe: {path: {{ $p.checkSocket }}}}}
{{- end -}}

{{- define "ext-authz.envoySpireCluster" -}}
- name: spire_agent
  type: STATIC
  connect_timeout: 1s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config: {http2_protocol_options: {}}
  load_assignment:
    cluster_name: spire_agent
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {pipe: {path: {{ .Values.spiffe.socketPath }}}}}
{{- end -}}

{{- define "ext-authz.envoyAdminCluster" -}}
{{- $p := include "ext-authz.paths" . | fromYaml -}}
- name: envoy_admin
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: envoy_admin
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {pipe: {path: {{ $p.envoyAdminSocket }}}}}
{{- end -}}
