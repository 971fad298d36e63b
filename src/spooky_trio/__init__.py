"""spooky-trio: an HTTP/3-first edge reverse proxy on Trio."""

__version__ = "0.1.0"
