"""The Azure Functions app that runs pywren calls: ``pywren_azure.function_app:app``.

Written with the azure-functions v2 programming model. Two functions, thin around
:mod:`pywren_azure.runtime` (which hands each payload to ``pywren_core.harness.serve``):

- ``pywren_queue``, a queue trigger on ``PYWREN_AZURE_QUEUE`` (connection ``AzureWebJobsStorage``):
  the message is deleted once its calls are done or reported as timed out or died, and its
  dequeue count is recorded in the calls' stats;
- ``pywren_http``, an HTTP trigger at ``/api/pywren`` (function key required): it answers 202 as
  soon as the calls started, or 429 when this instance has no free slot.

A runtime's app (see ``pywren_azure.deploy``) reads its own queue, ``<queue>-<runtime name>``, and
serves ``/api/pywren/<runtime name>`` (``PYWREN_AZURE_ROUTE``), both set by its ``function_app.py``.

Both are ``async`` so that waiting never holds one of the Python worker's few threads; the calls
themselves run in the harness's worker processes, a bounded number at once.
"""

from __future__ import annotations

import json
import logging
import os

import azure.functions as func

from pywren_azure import runtime
from pywren_azure.invoke import HTTP_ROUTE
from pywren_core import harness

DEFAULT_QUEUE = "pywren-calls"
#: Seconds an HTTP request may wait for a free slot before it is answered 429.
HTTP_SLOT_WAIT = 10.0

# The storage SDK logs every request at INFO: thousands of lines (and Application Insights costs)
# per job. Warnings and errors still come through.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

harness.prestart("azure")  # while the host loads the app: the first call finds a worker process warm

app = func.FunctionApp()


@app.function_name("pywren_queue")
@app.queue_trigger(arg_name="msg", queue_name=os.environ.get("PYWREN_AZURE_QUEUE", DEFAULT_QUEUE),
                   connection="AzureWebJobsStorage")
async def pywren_queue(msg: func.QueueMessage) -> None:
    await runtime.run_to_completion(json.loads(msg.get_body()), delivery=msg.dequeue_count)


@app.function_name("pywren_http")
@app.route(route=os.environ.get("PYWREN_AZURE_ROUTE", HTTP_ROUTE), methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def pywren_http(req: func.HttpRequest) -> func.HttpResponse:
    try:
        payload = req.get_json()
    except ValueError:
        return func.HttpResponse("the body is not JSON", status_code=400)
    if not isinstance(payload, dict) or not isinstance(payload.get("calls"), list):
        return func.HttpResponse("the body is not a pywren payload", status_code=400)
    if not await runtime.start_soon(payload, HTTP_SLOT_WAIT):
        return func.HttpResponse("every call slot of this instance is busy", status_code=429,
                                 headers={"Retry-After": "1"})
    return func.HttpResponse(status_code=202)
