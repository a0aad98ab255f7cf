"""The README's IAM policies cover every AWS call the plugin makes, so the docs cannot silently rot.

The calls are found in the plugin's source (boto3 client methods, paginators and waiters) and turned
into IAM actions; each module's calls must be allowed by the policies of whoever makes them.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

PLUGIN = Path(__file__).resolve().parent.parent
README = PLUGIN / "README.md"
#: Who makes the calls in each module: the function's role ("runner"), the user's client, the deployer.
CALLERS = {"storage.py": ("runner", "client"), "plugin.py": ("client", "runner"), "deploy.py": ("deployer",),
           "notice.py": ("client",), "handler.py": ("runner",)}
#: Operations whose IAM action is not the service prefix plus the operation's name.
ACTIONS = {
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:HeadBucket": "s3:ListBucket",
    "s3:HeadObject": "s3:GetObject",
    "s3:DeleteObjects": "s3:DeleteObject",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "lambda:Invoke": "lambda:InvokeFunction",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
}


def policies() -> dict[str, Any]:
    """The README's JSON blocks, by the file name the sentence before each gives it."""
    found = re.findall(r"`pywren-([\w-]+)\.json`:\n\n```json\n(.*?)```", README.read_text(), re.DOTALL)
    return {name: json.loads(text) for name, text in found}


def calls() -> dict[str, set[str]]:
    """IAM actions of the AWS operations each module of the plugin calls."""
    clients = {service: boto3.client(service, region_name="us-east-1") for service in ("s3", "lambda", "sqs")}
    methods = {m: (s, op) for s, c in clients.items() for m, op in c.meta.method_to_api_mapping.items()}
    by_operation = {operation: method for method, operation in methods.items()}
    found: dict[str, set[str]] = {}
    for module in sorted((PLUGIN / "pywren_aws").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, args = node.func.attr, [a.value for a in node.args if isinstance(a, ast.Constant)]
            if name == "get_paginator" and args:
                name = args[0]
            elif name == "get_waiter" and args:
                service = next(s for s, c in clients.items() if args[0] in c.waiter_names)
                name = by_operation[(service, clients[service].get_waiter(args[0]).config.operation)]
            if name in methods:
                service, op = methods[name]
                action = f"{service}:{op}"
                found.setdefault(module.name, set()).add(ACTIONS.get(action, action))
    return found


def allowed(policy: dict[str, Any]) -> set[str]:
    statements = policy["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    return {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


def test_the_readme_gives_four_policy_documents():
    assert set(policies()) == {"runner-trust", "runner-policy", "client-policy", "deployer-policy"}
    for name, policy in policies().items():
        assert policy["Version"] == "2012-10-17", name
        for action in allowed(policy):
            assert "*" not in action, f"{name}: {action} allows more than the plugin uses"


def test_the_scan_finds_the_calls_it_must():
    """If the scan stopped seeing calls, the coverage test below would pass on nothing."""
    found = calls()
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:DeleteObject"} <= found["storage.py"]
    assert "lambda:InvokeFunction" in found["plugin.py"]
    assert {"lambda:CreateFunction", "lambda:GetFunction", "s3:CreateBucket"} <= found["deploy.py"]
    assert {"sqs:CreateQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:DeleteQueue"} <= found["notice.py"]
    assert found["handler.py"] == {"sqs:SendMessage"}


@pytest.mark.parametrize("module", sorted(calls()))
def test_every_call_is_allowed_to_whoever_makes_it(module):
    assert module in CALLERS, f"pywren_aws/{module} calls AWS: say in CALLERS whose policy covers it"
    docs = policies()
    for caller in CALLERS[module]:
        granted = allowed(docs[f"{caller}-policy"])
        missing = {a for a in calls()[module] if not any(fnmatch.fnmatchcase(a, g) for g in granted)}
        assert not missing, f"README: pywren-{caller}-policy.json lacks {sorted(missing)} (used in {module})"


def test_the_function_role_is_for_lambda_and_may_log():
    (trust,) = policies()["runner-trust"]["Statement"]
    assert trust == {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    assert {"logs:CreateLogStream", "logs:PutLogEvents"} <= allowed(policies()["runner-policy"])


def test_the_deployer_may_pass_the_role_to_lambda_only():
    """create_function hands the function its role: iam:PassRole, limited to Lambda."""
    (passing,) = [s for s in policies()["deployer-policy"]["Statement"] if s["Action"] == "iam:PassRole"]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}


def test_a_data_bucket_is_listed_by_the_client_and_read_by_the_function():
    """README "Data in S3": the client plans a map over s3:// URLs by listing, and never reads the data;
    the function's role reads the pieces (and may list, so a missing object is NoSuchKey, not AccessDenied)."""

    def granted_on(policy: dict[str, Any], resource: str) -> set[str]:
        return {a for s in policy["Statement"] if s["Resource"] == resource
                for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}

    data = "arn:aws:s3:::my-logs"
    docs = policies()
    assert granted_on(docs["client-policy"], data) == {"s3:ListBucket"}
    assert granted_on(docs["client-policy"], data + "/*") == set()
    assert granted_on(docs["runner-policy"], data) == {"s3:ListBucket"}
    assert granted_on(docs["runner-policy"], data + "/*") == {"s3:GetObject"}
