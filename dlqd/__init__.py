"""dlqd: a durable download-queue daemon for a home music library."""

__version__ = "0.1.0"
