"""The admin API (gRPC servicer) and the command line that calls it."""
