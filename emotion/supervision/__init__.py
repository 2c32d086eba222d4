"""`emotion serve --workers N`: the supervisor and the worker processes it starts and restarts."""
