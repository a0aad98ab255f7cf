"""pywren-azure: run pywren calls on Azure Functions, with job objects in Azure Blob Storage.

Installed, it registers the ``azure`` backend (entry point group ``pywren``); the hooks live in
:mod:`pywren_azure.plugin` and the function app in :mod:`pywren_azure.function_app`.
"""

__version__ = "0.1.0"
