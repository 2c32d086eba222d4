"""Helpers the tests share: servers in subprocesses, raw HTTP/2 clients, sample models."""
