"""The ``pywren`` command line: inspect backends and config, smoke-test, deploy, clean up."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pywren_core import __version__, manifests
from pywren_core import config as config_module
from pywren_core.errors import ConfigError, PywrenError, SignatureError
from pywren_core.plugins import Backend, backend_entries, load_backend, wrapper_entries
from pywren_core.protocol import (
    JOBS_PREFIX,
    JobKeys,
    delete_jobs,
    executor_started,
    load_status,
    parse_status_key,
)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_backends(args: argparse.Namespace) -> int:
    """List installed backends; a plugin that fails to load is explained, the others still shown."""
    rows, features = [], []
    for name, entry in sorted(backend_entries().items()):
        source = "built-in" if entry.builtin else f"entry point {entry.target}"
        try:
            backend: Backend | None = load_backend(name)
            state = "ok"
        except PywrenError as exc:
            backend, state = None, f"BROKEN: {exc}"
        rows.append([name, entry.distribution, entry.version, source, state])
        if backend is not None:
            limits, info = backend.info.limits, backend.info
            features.append(
                [
                    name,
                    f"{limits.max_payload_bytes:,}",
                    f"{limits.max_runtime:g}",
                    f"{limits.max_concurrency:,}",
                    f"{limits.max_invoke_rate:g}" if limits.max_invoke_rate else "-",
                    ", ".join(f"{s}://" for s in info.data_schemes) or "-",
                    ", ".join(f"{k}: {v}" for k, v in info.features.items()),
                ]
            )
    print(_table(rows, ["backend", "distribution", "version", "source", "status"]))
    wrappers = []
    for name, entry in sorted(wrapper_entries().items()):
        try:
            entry.load()
            state = "ok"
        except PywrenError as exc:
            state = f"BROKEN: {exc}"
        wrappers.append([name, entry.distribution, entry.version, f"entry point {entry.target}", state])
    if wrappers:
        print("\nwrapper plugins (each wraps every backend above):")
        print(_table(wrappers, ["wrapper", "distribution", "version", "source", "status"]))
    if args.features:
        print()
        headers = ["backend", "max payload B", "max runtime s", "concurrency", "invokes/s", "data URLs", "features"]
        print(_table(features, headers))
    return 0


def _load(args: argparse.Namespace) -> tuple[config_module.Config, Backend]:
    overrides = {"backend": args.backend} if getattr(args, "backend", None) else {}
    if getattr(args, "runtime", None):
        overrides["runtime"] = args.runtime
    cfg = config_module.load(None, **overrides)
    return cfg, load_backend(cfg.backend)


def _runtime(cfg: config_module.Config, backend: Backend, upgrade: bool = False, installer: str | None = None) -> Any:
    """The configured runtime, built for the backend's platform when missing (None: none configured)."""
    from pywren_core import runtime

    say = lambda text: print(f"pywren: {text}", file=sys.stderr)
    return runtime.for_config(cfg, backend.info, log=say, upgrade=upgrade, installer=installer)


def cmd_runtime(args: argparse.Namespace) -> int:
    """Build, list, show and remove runtimes; write a Dockerfile for one."""
    import json

    from pywren_core import runtime

    if args.action == "list":
        rows = [[r.name, r.manifest.get("label", ""), r.manifest["platform"]["os"], r.manifest["python"],
                 f"{r.manifest.get('size_bytes', 0) / 1e6:.1f} MB", str(len(r.distributions)),
                 r.image or ", ".join(r.manifest.get("requirements", [])) or "(pywren only)"]
                for r in runtime.built()]
        print(_table(rows, ["runtime", "label", "os", "python", "size", "dists", "requirements / image"]) if rows
              else f"no runtimes built yet under {runtime.runtimes_dir()}")
        return 0
    if args.action in ("show", "remove"):
        if not args.name:
            raise ConfigError(f"pywren runtime {args.action} needs a runtime's name (see `pywren runtime list`)")
        if args.action == "remove":
            runtime.remove(args.name)
            print(f"removed runtime {args.name}")
        else:
            print(json.dumps(runtime.load(args.name).manifest, indent=1, sort_keys=True))
        return 0
    cfg, backend = _load(args)
    built = _runtime(cfg, backend, upgrade=args.upgrade, installer=args.installer)
    if built is None:
        raise ConfigError("no runtime configured: set runtime: {requirements: [...]} (or runtimes: {NAME: ...} and "
                          "--runtime NAME) in the config")
    if args.action == "dockerfile":
        platform = backend.info.platform
        out = Path(args.output)
        packages = {"pywren-core": "pywren_core", backend.entry.distribution: backend.entry.target.split(".")[0]}
        for name, content in runtime.artifact_files(None, packages).items():
            path = out / "code" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
        (out / "Dockerfile").write_text(runtime.dockerfile(built, platform, backend.info.handler))
        print(f"wrote {out / 'Dockerfile'} and {out / 'code'} for runtime {built.name} on {backend.name}")
        return 0
    manifest = built.manifest
    print(f"runtime {built.name} ({built.label}) for {backend.name}: {len(built.distributions)} "
          f"distributions, {manifest.get('size_bytes', 0) / 1e6:.1f} MB, Python {manifest['python']}, in {built.path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Show the effective config, secrets masked, after checking it."""
    import yaml

    cfg, backend = _load(args)
    shown = cfg.masked(backend.info)  # validates the backend's section too
    path = config_module.config_file()
    print(f"# config file: {path if path else 'none (defaults and environment)'}")
    print(yaml.safe_dump(shown, sort_keys=False).rstrip())
    print(f"# valid for backend {cfg.backend!r}", file=sys.stderr)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Run a small map on the configured backend and show what came back."""
    import pywren_core as pw

    start = time.monotonic()
    with pw.executor(**({"backend": args.backend} if args.backend else {})) as ex:
        futures = ex.map(_hello, range(args.calls))
        results = ex.get_result(futures, timeout=args.timeout)
    workers = {f.stats.get("worker_id") for f in futures}
    print(
        f"{len(results)} calls on backend {ex.info.name!r} in {time.monotonic() - start:.2f} s "
        f"on {len(workers)} worker{'s' if len(workers) != 1 else ''}; first results: {results[:3]}"
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run one call and compare its worker with this client; exit 1 when what calls need differs."""
    import importlib

    import pywren_core as pw
    from pywren_core import doctor

    function = None
    if args.function:
        module, _, attr = args.function.partition(":")
        function = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            function = getattr(function, part)
    with pw.executor(**({"backend": args.backend} if args.backend else {}), progress=False) as ex:
        rows = doctor.check(ex, function, args.package, timeout=args.timeout)
        name = ex.info.name
    shown = rows if args.all else [r for r in rows if r.verdict != "same"]
    marks = {"same": "", "differs": "differs", "breaks": "BREAKS CALLS"}
    if shown:
        table = [[r.what, r.client, r.worker, marks[r.verdict]] for r in shown]
        print(_table(table, ["", "client", f"{name} worker", ""]))
    broken = [r.what for r in rows if r.verdict == "breaks"]
    if broken:
        print(f"\n{len(broken)} difference(s) calls depend on: {', '.join(broken)}. Install the client's versions "
              f"on the workers (the {name} backend's README says how), or match the client to them.")
        return 1
    same = sum(r.verdict == "same" for r in rows)
    print(f"nothing calls depend on differs on the {name} workers ({same} of {len(rows)} facts the same)")
    return 0


def _hello(x: int) -> str:
    return f"hello {x}"


def cmd_clean(args: argparse.Namespace) -> int:
    """Delete job objects and their manifests: one job, one executor's, old ones, or all of them."""
    if sum(map(bool, (args.target, args.all, args.older_than))) != 1:
        print("say what to clean: an EXECUTOR_ID, EXECUTOR_ID/JOB_ID, --older-than AGE, or --all", file=sys.stderr)
        return 2
    cfg, backend = _load(args)
    session = backend.open(cfg.backend_section(backend.info))
    try:
        if args.target:
            executor_id, _, job_id = args.target.strip("/").partition("/")
            if not _is_id(executor_id) or (job_id and not _is_id(job_id)):
                raise ConfigError(f"not a job or executor id: {args.target!r} (EXECUTOR_ID or EXECUTOR_ID/JOB_ID)")
            prefixes = [JobKeys(executor_id, job_id).prefix if job_id else f"{JOBS_PREFIX}/{executor_id}/"]
        else:
            keys = session.list(f"{JOBS_PREFIX}/")
            executors = sorted({key.split("/")[1] for key in keys if key.count("/") >= 2})
            if args.older_than:
                cutoff = time.time() - _duration(args.older_than)
                executors = [e for e in executors if (started := executor_started(e)) is not None and started < cutoff]
            prefixes = [f"{JOBS_PREFIX}/{e}/" for e in executors]
        deleted = 0
        for prefix in prefixes:
            deleted += delete_jobs(session, prefix)
            executor_id, _, job_id = prefix[len(JOBS_PREFIX) + 1 :].strip("/").partition("/")
            manifests.remove_all(executor_id, job_id or None)
    finally:
        session.close()
    print(f"deleted {deleted} objects of {len(prefixes)} {'job' if args.target and '/' in args.target else 'executor'}"
          f"{'s' if len(prefixes) != 1 else ''}")
    return 0


def _is_id(text: str) -> bool:
    return bool(text) and text.isalnum()


def _duration(text: str) -> float:
    """Seconds in a duration like ``90s``, ``30m``, ``12h``, ``1d`` or ``2w``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:]
    try:
        if unit not in units or float(number) < 0:
            raise ValueError
        return float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"--older-than wants an age like 30m, 12h, 1d or 2w, not {text!r}") from None


def cmd_status(args: argparse.Namespace) -> int:
    """How far a job got, read from storage: works from any process, even after the client died."""
    cfg, backend = _load(args)
    manifest = manifests.read(args.job)
    session = backend.open(cfg.backend_section(backend.info))
    keys = JobKeys(manifest["executor_id"], manifest["job_id"])
    secret = bytes.fromhex(manifest["secret"])
    kinds: dict[str, int] = {}
    reported = set()
    forged = 0
    try:
        for key in session.list(keys.prefix + "status/"):
            parsed = parse_status_key(key)
            if parsed is None:
                continue
            try:
                kind = load_status(secret, keys, parsed[0], parsed[1], session.get(key)).get("kind", "unknown")
            except SignatureError:
                forged += 1
                continue
            if kind == "success" or parsed[0] not in reported:
                reported.add(parsed[0])
                kinds[kind] = kinds.get(kind, 0) + 1
    finally:
        session.close()
    pending = manifest["calls"] - len(reported)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    ignored = f"; {forged} status objects not signed by this job, ignored" if forged else ""
    print(f"job {args.job} on {manifest['backend']}: {manifest['calls']} calls; {summary or 'none reported'}; "
          f"{pending} not reported yet{ignored}")
    print(f"collect the results with: pw.executor().attach({args.job!r})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    return _lifecycle(args, "deploy")


def cmd_remove(args: argparse.Namespace) -> int:
    return _lifecycle(args, "remove")


def _lifecycle(args: argparse.Namespace, action: str) -> int:
    cfg, backend = _load(args)
    runtime = _runtime(cfg, backend) if action == "deploy" or getattr(args, "runtime", None) else None
    session = backend.open(cfg.backend_section(backend.info), runtime=runtime)
    try:
        summary = session.deploy() if action == "deploy" else session.remove()
    finally:
        session.close()
    if summary is None:
        print(f"backend {backend.name!r} has nothing to {action}")
    else:
        print(summary)
    return 0


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number of ``kind`` above 0, else a usage error that says so."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pywren", description="Run map(f, items) on serverless functions.")
    parser.add_argument("--version", action="version", version=f"pywren-core {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str, backend: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        if backend:
            sub.add_argument("--backend", help="use this backend instead of the configured one")
        return sub

    command("backends", cmd_backends, "list installed backends", backend=False).add_argument(
        "--features", action="store_true", help="also show each backend's limits and features"
    )
    command("config", cmd_config, "check and show the effective config (secrets masked)")
    test = command("test", cmd_test, "run a hello-world map on the configured backend")
    test.add_argument("--calls", type=positive(int), default=10, help="calls to run (default: 10)")
    test.add_argument("--timeout", type=positive(float), default=300, help="seconds to wait for them (default: 300)")
    doctor = command("doctor", cmd_doctor, "compare this client with the backend's workers (runs one call)")
    doctor.add_argument("--package", action="append", default=[], metavar="DIST",
                        help="a distribution your calls need (repeatable); compared strictly")
    doctor.add_argument("--function", metavar="MODULE:NAME",
                        help="a function whose imports must match (its module is imported here)")
    doctor.add_argument("--all", action="store_true", help="show the facts that are the same too")
    doctor.add_argument("--timeout", type=positive(float), default=300, help="seconds to wait (default: 300)")
    clean = command("clean", cmd_clean, "delete the storage objects of a job or an executor")
    clean.add_argument("target", nargs="?", help="EXECUTOR_ID or EXECUTOR_ID/JOB_ID")
    clean.add_argument("--all", action="store_true", help="every job's objects")
    clean.add_argument("--older-than", metavar="AGE", help="jobs of executors started longer ago (30m, 12h, 1d, 2w)")
    status = command("status", cmd_status, "how far a job got (works after the client died)")
    status.add_argument("job", help="EXECUTOR_ID/JOB_ID, as in a future's executor_id and job_id")
    deploy = command("deploy", cmd_deploy, "create or update the backend's cloud function (with the runtime)")
    deploy.add_argument("--runtime", metavar="NAME", help="deploy this runtime from 'runtimes:' instead")
    runtime = command("runtime", cmd_runtime, "build, list, show or remove runtimes (the packages calls run with)")
    runtime.add_argument("action", choices=["build", "list", "show", "remove", "dockerfile"])
    runtime.add_argument("name", nargs="?", help="a built runtime's name (show, remove)")
    runtime.add_argument("--runtime", metavar="NAME", help="build this runtime from 'runtimes:' instead")
    runtime.add_argument("--upgrade", action="store_true", help="resolve the requirements again, even if built")
    runtime.add_argument("--installer", choices=["pip", "uv"], help="default: uv when installed, else pip")
    runtime.add_argument("-o", "--output", default="pywren-image",
                         help="dockerfile: the folder to write (default: pywren-image)")
    remove = command("remove", cmd_remove, "remove the backend's cloud functions (every runtime's)")
    remove.add_argument("--runtime", metavar="NAME", help="remove only this runtime's function (from 'runtimes:')")
    from pywren_core.bench.cli import add_bench_command

    add_bench_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PywrenError as exc:
        print(f"pywren: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
