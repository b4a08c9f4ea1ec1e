"""The sample server: a loopback HTTP server speaking the S3 REST subset and the Allen API routes."""

from .link import Link
from .transport import SampleServer

__all__ = ["Link", "SampleServer"]
