"""`ext-authz serve | validate | check | dev` — the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .admin.cli import add_admin_commands

__all__ = ["main"]


# Exit codes, the same for every command: 0 ok (allowed); 1 denied, or a policy test failed; 2 usage
# (argparse); 3 invalid input (a config, a request, a value refused); 4 the admin API is unreachable.
EXIT_OK, EXIT_DENY, EXIT_USAGE, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
# The output's reader went away before it was all written: what shells report for a program SIGPIPE
# killed (128 + 13), so `ext-authz test | head` under pipefail never passes for a failing suite.
EXIT_PIPE = 141
EXIT_CODES = (
    "Exit codes: 0 ok (allowed, valid, every test passed); 1 denied, or a policy test failed; 2 usage (an"
    " unknown command or option, a missing argument); 3 invalid input (a config, a request, a value the"
    " server refused); 4 the admin API is unreachable; 141 the reader of the output went away."
)


LOG_LEVELS = ("debug", "info", "warning", "error")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, like the decision log: time (RFC 3339), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        out = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _utf8(record.getMessage()),
        }
        if record.exc_info:
            out["exception"] = _utf8(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


def _utf8(text: str) -> str:
    """Text JSON can carry: a lone surrogate (from a JSON ``\\ud800`` escape) becomes an escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def _cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .errors import AuthzError
    from .serve.app import serve, worker_index

    try:
        cfg = load_settings(args.config)
    except AuthzError as exc:
        logging.getLogger("ext_authz").error("cannot start: %s", exc.detail)
        return EXIT_INVALID
    if worker_index() is None and cfg.workers > 1:
        from .serve.workers import Supervisor

        return asyncio.run(Supervisor(Path(args.config), cfg, ready_file=args.ready_file).run())
    ready = Path(args.ready_file) if args.ready_file else None
    if cfg.event_loop == "uvloop":
        import uvloop

        return int(uvloop.run(serve(Path(args.config), ready)))
    return asyncio.run(serve(Path(args.config), ready))


def _cmd_validate(args: argparse.Namespace) -> int:
    from .errors import AuthzError
    from .loader import load_engine

    try:
        engine = load_engine(args.file)
    except AuthzError as exc:
        print(f"invalid: {exc.detail}", file=sys.stderr)
        return EXIT_INVALID
    cfg = engine.config
    print(
        f"ok: {args.file}: {len(cfg.rules)} rules, trust domains {sorted(cfg.trust_domains) or '-'}, "
        f"issuers {sorted(cfg.issuers) or '-'}, revision {engine.revision}"
    )
    if not engine.policy.reading("grants"):
        print(
            "warning: no enforced rule reads `grants`: just-in-time grants change no decision"
            " (see docs/continuous-trust.md, 'Just-in-time grants')",
            file=sys.stderr,
        )
    return 0


def _decision_json(decision: Any, response: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    p = decision.principal
    out: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "allowed": decision.allowed,
        "status": decision.status,
        "reason": decision.reason,
        "rule": decision.rule,
        "identity": {
            "principals": list(p.keys),
            "kinds": list(p.kinds),
            "spiffe_id": p.spiffe_id,
            "subject": p.token.subject if p.token else "",
            "issuer": p.token.issuer if p.token else "",
        },
        "shadow": [{"rule": s.rule, "effect": s.effect, "matched": s.matched} for s in decision.shadow],
        "detail": decision.detail,
        "response": json_format.MessageToDict(response),
    }
    if decision.shadow:
        out["shadow_allowed"] = decision.shadow_allowed
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest

    from .errors import AuthzError
    from .loader import load_engine
    from .offline import decide_offline

    try:
        engine = load_engine(args.config)
    except AuthzError as exc:
        print(f"invalid config: {exc.detail}", file=sys.stderr)
        return EXIT_INVALID
    try:
        raw = Path(args.request).read_text() if args.request != "-" else sys.stdin.read()
        request = json_format.Parse(raw, CheckRequest())
    except (OSError, json_format.ParseError) as exc:
        print(f"cannot read the CheckRequest {args.request}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else datetime.now(UTC)
    except ValueError:
        print(f"ext-authz: --now: expected an RFC 3339 time, got {args.now!r}", file=sys.stderr)
        return EXIT_INVALID
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    state = None
    if args.state:
        try:
            state = _state_at(engine.config, args.state, now.timestamp())
        except AuthzError as exc:
            print(f"ext-authz: --state: {exc.detail}", file=sys.stderr)
            return EXIT_INVALID
    decision, response = decide_offline(request, engine, now, state)
    out = _decision_json(decision, response)
    if state is not None:
        out["state"] = {
            "url": args.state,
            "as_of": now.isoformat(),
            "revocations": len(state.revocations),
            "grants": len(state.grants),
            "exceptions": len(state.exceptions),
            "signals": len(state.signals),
        }
    print(json.dumps(out, indent=2))
    return 0 if decision.allowed else 1


def _state_at(settings: Any, url: str, at: float) -> Any:
    """The state ``url`` holds, as it stood at ``at`` (read once; the config's HMAC key opens it)."""
    from .state.offline import snapshot_at

    return asyncio.run(snapshot_at(settings, url, at))


def _suggest(args: argparse.Namespace, since: datetime | None, engine: Any) -> int:
    """``report --suggest``: the suggested policy as YAML on stdout, what it drops as comments."""
    import yaml

    from .observe.report import build_report, read_records
    from .observe.suggest import suggest, suggested_config

    temporary = engine.policy.reading("grants") if engine is not None else ()
    try:
        with sys.stdin if args.log == "-" else open(args.log, encoding="utf-8", errors="replace") as f:
            records = list(read_records(f, since))
    except OSError as exc:
        print(f"ext-authz: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    suggestions = suggest(records, temporary)
    config = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    notes: list[str] = []
    doc = suggested_config(config, suggestions, shadow=args.shadow, notes=notes)

    def comment(text: str) -> str:
        # Identities come from the log, which callers wrote: as JSON with every character past ASCII
        # escaped, so nothing in one (a U+2028 line break YAML honours) can end the comment.
        return "#   " + json.dumps(text)[1:-1]

    lines = [
        f"# ext-authz report --suggest: from {len(records)} decisions"
        + (f" since {since.isoformat()}" if since else "")
        + f", {len({s.identity for s in suggestions})} identities allowed something.",
        "# Each suggested rule covers the hosts and paths one identity used with one method under one rule,",
        "# within that rule (its condition, context extensions, step-up and response kept); ids are *.",
    ]
    if notes:
        lines.append("# Not written:")
        lines.extend(comment(n) for n in notes)
    if engine is not None:
        unused = [u for u in build_report(records, engine, datetime.now(UTC)) if u.unused_rules]
        if unused:
            lines.append("# What the current policy allows that was never used (dropped here):")
            lines.extend(comment(f"{u.identity}: {', '.join(u.unused_rules)}") for u in unused)
        if args.shadow:
            lines.append("# The suggested rules run in shadow beside the enforced ones: compare with report.")
    print("\n".join(lines))
    print(yaml.safe_dump(doc, sort_keys=False, width=110), end="")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from .errors import AuthzError
    from .loader import load_engine
    from .observe.report import (
        build_governance,
        build_report,
        read_records,
        render_governance,
        render_report,
    )
    from .settings import parse_duration

    since = None
    if args.since:
        try:
            since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
        except ValueError:
            print(
                f"ext-authz: --since: expected a duration such as 24h or 7d, got {args.since!r}",
                file=sys.stderr,
            )
            return EXIT_INVALID
    engine = None
    if args.config:
        try:
            engine = load_engine(args.config)
        except AuthzError as exc:
            print(f"ext-authz: invalid config: {exc.detail}", file=sys.stderr)
            return EXIT_INVALID
    if args.shadow and not args.suggest:
        print("ext-authz: --shadow goes with --suggest", file=sys.stderr)
        return EXIT_USAGE
    if args.suggest:
        return _suggest(args, since, engine)
    try:
        with sys.stdin if args.log == "-" else open(args.log, encoding="utf-8", errors="replace") as f:
            report = build_report(read_records(f, since), engine, datetime.now(UTC))
    except OSError as exc:
        print(f"ext-authz: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    audit = None
    if engine is not None and (args.state or engine.config.state.scheme != "memory"):
        try:
            audit = _audit_of(engine.config, args.state, since.timestamp() if since else 0.0)
        except AuthzError as exc:
            print(f"ext-authz: cannot read the audit log: {exc.detail}", file=sys.stderr)
            return EXIT_INVALID
    governance = build_governance(report, audit, engine)
    if args.json:
        out = {"identities": [u.as_dict() for u in report], **governance.as_dict()}
        print(json.dumps(out, indent=2))
    else:
        print(render_report(report, with_policy=engine is not None))
        print(render_governance(governance))
    return 0


def _audit_of(settings: Any, url: str | None, since: float) -> Any:
    from .state.offline import audit

    return asyncio.run(audit(settings, url, since))


def _cmd_test(args: argparse.Namespace) -> int:
    from .policytest import TestFileError, junit, run_file

    files: list[Path] = []
    for name in args.paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.y*ml") if "test" in p.name)
        else:
            files.append(path)
    if not files:
        print("ext-authz: no test files (name them, or a folder with *test*.yaml files)", file=sys.stderr)
        return EXIT_INVALID
    results = []
    for f in files:
        try:
            results += run_file(f, Path(args.config) if args.config else None)
        except TestFileError as exc:
            print(f"ext-authz: {exc}", file=sys.stderr)
            return EXIT_INVALID
    failed = [r for r in results if not r.passed]
    if args.junit:
        Path(args.junit).write_text(junit(results))
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            if not r.passed or args.verbose:
                print(r.line())
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return EXIT_DENY if failed else EXIT_OK


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """Every command path (``grant create``) with its options, read from the parser itself."""
    out: dict[str, list[str]] = {}
    opts = sorted({o for a in parser._actions for o in a.option_strings if o.startswith("--")})
    out[prefix] = opts
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_commands(sub, f"{prefix} {name}".strip()))
    return out


def _cmd_completion(args: argparse.Namespace) -> int:
    """A bash completion script (zsh: load it after `autoload bashcompinit && bashcompinit`)."""
    tree = _commands(build_parser())
    cases = []
    for path, opts in sorted(tree.items()):
        children = sorted(
            {
                p[len(path) :].split()[0]
                for p in tree
                if p.startswith(path) and p != path and (not path or p[len(path)] == " ")
            }
        )
        words = " ".join(children + opts)
        cases.append(f'    "{path}") words="{words}" ;;')
    known = " ".join(p.replace(" ", "_") for p in sorted(tree) if p)
    script = f"""# ext-authz completion for bash, and zsh after bashcompinit
# load it with: eval "$(ext-authz completion bash)"
_ext_authz() {{
  local cur path="" next w words known="{known}"
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
    next="${{path:+$path }}$w"
    case " $known " in *" ${{next// /_}} "*) path="$next" ;; esac
  done
  case "$path" in
{chr(10).join(cases)}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _ext_authz ext-authz
"""
    if args.shell == "zsh":  # zsh runs bash completion functions once bashcompinit is loaded
        script = "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" + script
    print(script, end="")
    return EXIT_OK


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from .settings import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_state_legacy(args: argparse.Namespace) -> int:
    """Records a store holds from before principal keys, one JSON object per line (they are not read)."""
    from .config import load_settings
    from .errors import AuthzError
    from .state.offline import legacy_records

    async def run() -> list[dict[str, Any]]:
        return await legacy_records(load_settings(args.config))

    try:
        found = asyncio.run(run())
    except AuthzError as exc:
        print(f"ext-authz: {exc.detail}", file=sys.stderr)
        return EXIT_INVALID
    for item in found:
        print(json.dumps(item, sort_keys=True))
    print(f"{len(found)} records from before principal keys", file=sys.stderr)
    return 0


def _cmd_dev_init(args: argparse.Namespace) -> int:
    from .dev.demo import init_demo

    d = Path(args.dir)
    if (d / "config.yaml").exists() and not args.force:
        print(f"{d}/config.yaml exists; use --force to regenerate the demo", file=sys.stderr)
        return EXIT_INVALID
    init_demo(d)
    print(f"demo trust domain written to {d} (config: {d / 'config.yaml'})")
    return 0


def _cmd_dev_dpop_proof(args: argparse.Namespace) -> int:
    from joserfc.errors import JoseError

    from .dev.demo import dpop_proof

    try:
        token = Path(args.token).read_text().strip()
        print(dpop_proof(Path(args.key), token, args.method, args.url))
    except (OSError, ValueError, KeyError, TypeError, JoseError) as exc:
        print(f"cannot make a proof: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _cmd_dev_up(args: argparse.Namespace) -> int:
    if args.spire:
        from .dev.spire_stack import run_spire_demo

        return run_spire_demo(Path(args.dir), Path(args.envoy_config))
    from .dev.stack import run_demo

    return run_demo(Path(args.dir), Path(args.envoy_config), Path(args.config) if args.config else None)


def _global_flags(p: argparse.ArgumentParser, default: object) -> None:
    """Flags every command takes, before or after its name (``default`` SUPPRESS on the subcommands,
    so a flag given before the name is not reset by the subcommand's default)."""
    p.add_argument("--log-level", choices=LOG_LEVELS, default=default, help="default: info")
    p.add_argument("--log-format", choices=("text", "json"), default=default, help="default: text")


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("epilog", EXIT_CODES)  # every command's --help says what its exit codes mean
        p: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        _global_flags(p, argparse.SUPPRESS)
        p.register("action", "parsers", _SubParsers)
        return p

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        # An unknown option is the subcommand's error, shown with its usage (not the top level's).
        extras = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras:
            self._name_parser_map[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


# Options whose value may start with '-' (a negative duration): `--for -5m` is `--for=-5m`, so the
# command refuses the value itself (exit 3, "--for must be positive") instead of a usage error.
_SIGNED_VALUES = ("--for", "--ttl", "--since")


def _joined(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIGNED_VALUES and i + 1 < len(argv) and re.match(r"-\d", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ext-authz",
        description="Continuous zero-trust authorization for Envoy",
        epilog=EXIT_CODES,
        allow_abbrev=False,  # `report --log` is not an abbreviation of the global --log-level
    )
    parser.add_argument("--version", action="version", version=f"ext-authz {__version__}")
    _global_flags(parser, None)
    parser.register("action", "parsers", _SubParsers)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve Envoy's ext_authz gRPC API")
    p.add_argument("--config", "-c", required=True, help="configuration file (YAML)")
    p.add_argument(
        "--ready-file",
        metavar="FILE",
        help="once ready, write where each listener is bound as JSON ({pid, check, http, admin}): a TCP"
        " port 0 in the config becomes the port taken. Removed when the server stops",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "validate", help="check a configuration and the files it names; exit 0 valid, 3 invalid"
    )
    p.add_argument("file")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("check", help="decide one CheckRequest (protobuf JSON) offline; exit 0 allow, 1 deny")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--request", "-r", required=True, help="CheckRequest as protobuf JSON, or - for stdin")
    p.add_argument("--now", help="decide as of this RFC 3339 time (default: now)")
    p.add_argument(
        "--state",
        metavar="URL",
        help="decide with the state this store held at --now (sqlite:///…, redis://…; the config's"
        " state.hmac_key_file opens it): reproduces a past decision while the store still holds it",
    )
    p.set_defaults(func=_cmd_check)

    add_admin_commands(sub)

    p = sub.add_parser(
        "completion", help='print a shell completion script: eval "$(ext-authz completion bash)"'
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=_cmd_completion)

    config = sub.add_parser("config", help="the configuration file").add_subparsers(
        dest="config_command", required=True
    )
    p = config.add_parser("schema", help="print the JSON Schema of the configuration file")
    p.set_defaults(func=_cmd_config_schema)

    state = sub.add_parser("state", help="the state store itself").add_subparsers(
        dest="state_command", required=True
    )
    p = state.add_parser("legacy", help="list records written before principal keys (they are not read)")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=_cmd_state_legacy)

    p = sub.add_parser(
        "test", help="run policy tests (YAML) offline; exit 0 all pass, 1 a failure, 3 invalid"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="test files, or folders of *test*.yaml files")
    p.add_argument("--config", "-c", help="the config to test (default: each file's `config:`)")
    p.add_argument("--json", action="store_true", help="every case as JSON")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML for CI")
    p.add_argument("--verbose", "-v", action="store_true", help="print passing cases too")
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("report", help="least-privilege review: what each identity actually used")
    p.add_argument("--log", required=True, help="decision log (JSON lines), or - for stdin")
    p.add_argument("--since", help="only records newer than this, e.g. 7d")
    p.add_argument(
        "--config",
        "-c",
        help="the policy (allow rules an identity is covered by but never used; rules reading claims)"
        " and the state store, whose audit log lists every grant and exception with who made and approved it",
    )
    p.add_argument(
        "--state", metavar="URL", help="read the audit log from this store instead of the config's"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--suggest",
        action="store_true",
        help="write a least-privilege policy from what each identity used (YAML: with --config, that"
        " config with its allow rules replaced; its deny and anonymous rules kept)",
    )
    p.add_argument(
        "--shadow",
        action="store_true",
        help="with --suggest: add the suggested rules beside the enforced ones, in mode: shadow",
    )
    p.set_defaults(func=_cmd_report)

    dev = sub.add_parser("dev", help="demo identities and a local Envoy stack").add_subparsers(
        dest="dev_command", required=True
    )
    p = dev.add_parser("init", help="write a demo trust domain, workloads, issuer, tokens and config")
    p.add_argument("dir")
    p.add_argument("--force", action="store_true", help="overwrite an existing demo")
    p.set_defaults(func=_cmd_dev_init)
    p = dev.add_parser(
        "dpop-proof",
        help="print a DPoP proof (RFC 9449) for one request, signed by a holder's key (the demo's client)",
    )
    p.add_argument("key", help="the holder's private key, a JWK file (EC P-256)")
    p.add_argument("token", help="a file holding the DPoP-bound token the proof goes with")
    p.add_argument("method", help="the request's method, e.g. GET")
    p.add_argument(
        "url", help="the request's URL without query or fragment, e.g. https://localhost:10444/user/profile"
    )
    p.set_defaults(func=_cmd_dev_dpop_proof)
    p = dev.add_parser("up", help="run ext-authz + Envoy + a demo upstream (what `make run` does)")
    p.add_argument("dir", nargs="?", default="demo")
    p.add_argument("--envoy-config", default="envoy.yaml")
    p.add_argument(
        "--config",
        "-c",
        help="your ext-authz config instead of the demo's (its listeners are replaced by the demo's;"
        " relative paths are relative to it)",
    )
    p.add_argument(
        "--spire",
        action="store_true",
        help="a real SPIRE server and agent issue the identities (SDS, Workload API)",
    )
    p.set_defaults(func=_cmd_dev_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_joined(list(sys.argv[1:] if argv is None else argv)))
    _setup_logging(args.log_level or "info", args.log_format or "text")
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): no traceback, and not a success either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at interpreter exit
        return EXIT_PIPE
    return result


if __name__ == "__main__":
    sys.exit(main())
