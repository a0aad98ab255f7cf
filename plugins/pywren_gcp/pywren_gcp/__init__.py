"""pywren backend for Google Cloud."""

__version__ = "0.1.0"
