"""Observers: the decision log (metrics and the live stream arrive in later versions)."""
