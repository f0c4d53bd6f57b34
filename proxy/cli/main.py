"""``tenant-proxy``: run the proxy, make password verifiers, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys

from proxy.auth.scram import make_verifier
from proxy.cli.floor import add_install_parser
from proxy.cli.keys import add_keys_parser
from proxy.cli.tools import add_tool_parsers
from proxy.config.settings import FLOOR_MODES, Settings, load_settings
from proxy.config.yamlsource import ConfigError
from proxy.floor.monitor import FloorUnavailable, inspect, refusal
from proxy.observability.logs import configure_logging
from proxy.policy.rules import Rules, load_rules
from proxy.server.run import install_uvloop, serve
from proxy.server.supervisor import exec_supervisor


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, listen=args.listen, upstream=args.upstream,
                                 rules=args.rules, workers=args.workers, floor=args.floor)
    except ConfigError as exc:
        print(f"tenant-proxy: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)
    workers = settings.worker_count()
    rules = None
    if settings.rules:
        try:
            rules = load_rules(settings.rules)
        except ConfigError as exc:
            print(f"tenant-proxy: {exc}", file=sys.stderr)
            return 2
        if workers > 1 and rules.anomaly.mode == "learn":
            logging.getLogger("tenant_proxy").warning(
                "anomaly learn mode with %d workers: each learns only the traffic it serves "
                "and the saved baseline is the last one written; learn with --workers 1",
                workers)
    if workers > 1:
        if settings.floor == "required" and not _floor_on(settings, rules):
            return 2
        exec_supervisor(settings, workers, args.log_level, args.log_format)  # does not return
    install_uvloop()
    try:
        return asyncio.run(serve(settings))
    except FloorUnavailable as exc:
        print(f"tenant-proxy: {exc}", file=sys.stderr)
        return 2


def _floor_on(settings: Settings, rules: Rules | None) -> bool:
    """Before starting workers (each checks again): is the required floor on?"""
    report = asyncio.run(inspect(settings, rules))
    if not report.on:
        print(f"tenant-proxy: {refusal(settings, report)}", file=sys.stderr)
    return report.on


def cmd_passwd(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else \
            getpass.getpass("Password: ")
    if not password:
        print("tenant-proxy: empty password", file=sys.stderr)
        return 2
    verifier = str(make_verifier(password, args.iterations))
    print(f"{args.user}: \"{verifier}\"" if args.user else verifier)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.cli.demo import run_demo

    configure_logging(args.log_level, "text")
    install_uvloop()
    return run_demo(port=args.port, interactive=not args.no_wait)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenant-proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", help="settings file (env TENANT_PROXY_CONFIG)")
    run.add_argument("--listen", "-l", help="HOST:PORT to listen on (env TENANT_PROXY_LISTEN)")
    run.add_argument("--upstream", "-u",
                     help="postgresql:// URL of the upstream (env TENANT_PROXY_UPSTREAM)")
    run.add_argument("--rules", "-r", help="rules file (env TENANT_PROXY_RULES)")
    run.add_argument("--workers", "-w", type=int,
                     help="worker processes sharing the port (env TENANT_PROXY_WORKERS; "
                          "default: one per available CPU)")
    run.add_argument("--floor", choices=FLOOR_MODES,
                     help="what an off floor (PostgreSQL not enforcing isolation) means: "
                          "refuse to start, warn, or do not inspect (env TENANT_PROXY_FLOOR; "
                          "default: recommended)")
    run.add_argument("--log-level", default="info")
    run.add_argument("--log-format", choices=("json", "text"), default="json")
    run.set_defaults(func=cmd_run)

    passwd = sub.add_parser("passwd", help="turn a password into a SCRAM-SHA-256 verifier")
    passwd.add_argument("user", nargs="?", help="print as a YAML 'user: verifier' line")
    passwd.add_argument("--password", help="the password (default: prompt or stdin)")
    passwd.add_argument("--iterations", type=int, default=4096)
    passwd.set_defaults(func=cmd_passwd)

    demo = sub.add_parser("demo", help="throwaway PostgreSQL + proxy to try with psql")
    demo.add_argument("--port", type=int, default=6432, help="proxy port (0: any free port)")
    demo.add_argument("--no-wait", action="store_true",
                      help="run the demonstration and exit instead of waiting for Ctrl-C")
    demo.add_argument("--log-level", default="warning")
    demo.set_defaults(func=cmd_demo)
    add_tool_parsers(sub)
    add_install_parser(sub)
    add_keys_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
