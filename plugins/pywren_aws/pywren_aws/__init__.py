"""pywren's AWS backend: job objects in S3, calls on AWS Lambda.

Installed, it registers the backend key ``aws`` (entry-point group ``pywren``); the hooks live in
:mod:`pywren_aws.plugin`, the function's entry point in :mod:`pywren_aws.handler`.
"""

__version__ = "0.1.0"
