"""Serving: the Check servicer, the runtime, reloads, health, lifecycle and workers."""
