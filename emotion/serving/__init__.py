"""One gRPC server: the `Pipeline` service, per-call bookkeeping, admission, statuses, sockets."""
