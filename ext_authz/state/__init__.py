"""Continuous trust state: revocations, signals, grants, exceptions; snapshots and stores."""
