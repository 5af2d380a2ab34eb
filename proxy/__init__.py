"""query-signing-proxy: unsigned AWS Query API in, role-signed AWS JSON 1.1 out."""

__version__ = "0.1.0"
