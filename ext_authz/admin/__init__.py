"""The admin API (gRPC servicer) and the command line that calls it."""

# The gRPC metadata key a unix-socket caller names itself with (admin.local_approvals; over TCP the
# verified X.509-SVID is the actor). Shared by the servicer and the CLI, so the CLI needs no servicer.
ACTOR_METADATA = "x-ext-authz-actor"
