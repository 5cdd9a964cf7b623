"""The Envoy edge: the only modules that read or build Envoy protobufs."""
