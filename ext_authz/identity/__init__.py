"""Workload identity: SPIFFE IDs and trust domains."""
