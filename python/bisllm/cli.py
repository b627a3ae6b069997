"""Command-line entry points: `bisllm` (config check/migrate/schema, serve) and `bisllm-router`.

    bisllm config check FILE...          every error of each file; exit 1 if any, else 0
    bisllm config migrate FILE [-o OUT]  v1 (Engine-Builder-LLM) -> v2 (BIS-LLM); notes on stderr
    bisllm config schema                 the JSON schema of config.yaml (for editors)
    bisllm serve FILE [--dry-run]        start workers + router, wait for health, supervise

Imports are lazy so `bisllm-router` and `--help` don't pay for the config stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "router_main"]


def _config_check(args: argparse.Namespace) -> int:
    from bisllm.config import check_file

    failed = False
    for path in args.files:
        errors = check_file(path)
        if errors:
            failed = True
            noun = "error" if len(errors) == 1 else "errors"
            print(f"{path}: {len(errors)} {noun}")
            for error in errors:
                print(f"- {error}")
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _config_migrate(args: argparse.Namespace) -> int:
    from bisllm.config import ConfigErrors, dump_yaml, migrate, read_yaml, validate

    path = Path(args.file)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ConfigErrors as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    if not isinstance(raw, dict):
        print(f"{path}: expected a mapping of fields", file=sys.stderr)
        return 1
    result = migrate(raw, tokens_per_request=args.tokens_per_request)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if not result.changed:
        print(f"{path}: already a v2 config, nothing to migrate", file=sys.stderr)
    text = dump_yaml(result.data)
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    _, errors = validate(result.data)
    if errors:
        print(
            f"the migrated config still has {len(errors)} error(s) to fix by hand:", file=sys.stderr
        )
        for error in errors:
            print(f"- {error}", file=sys.stderr)
        return 1
    return 0


def _config_schema(_args: argparse.Namespace) -> int:
    import msgspec

    from bisllm.config import Config

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(msgspec.json.schema(Config))).decode())
    sys.stdout.write("\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bisllm.serve import serve

    return serve(args.config, dry_run=args.dry_run, log_dir=args.log_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bisllm", description="bisllm: a BIS-LLM-style LLM serving stack on vLLM"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="check, migrate or describe config.yaml files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate config files, printing every error")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_config_check)
    migrate = config_sub.add_parser(
        "migrate", help="rewrite a v1 (Engine-Builder-LLM) config as v2"
    )
    migrate.add_argument("file", metavar="FILE")
    migrate.add_argument("-o", "--output", metavar="OUT", help="write here (default: stdout)")
    migrate.add_argument(
        "--tokens-per-request",
        type=int,
        metavar="N",
        help="average prompt+output tokens per request, to turn concurrency_target into "
        "target_in_flight_tokens",
    )
    migrate.set_defaults(func=_config_migrate)
    schema = config_sub.add_parser("schema", help="print the JSON schema of config.yaml")
    schema.set_defaults(func=_config_schema)

    serve = sub.add_parser("serve", help="start the router and workers a config asks for")
    serve.add_argument("config", metavar="CONFIG")
    serve.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    serve.add_argument(
        "--log-dir", metavar="DIR", help="per-process logs (default: bisllm.log_dir or a temp dir)"
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `bisllm` command; returns the exit code."""
    args = _parser().parse_args(argv)
    return int(args.func(args))


def router_main() -> None:
    """The `bisllm-router` command (the router package's own CLI, imported only when run)."""
    from bisllm.router.cli import main as _router_main

    _router_main()


if __name__ == "__main__":
    sys.exit(main())
