"""Write the nginx site and the systemd units for one install.

The files under ``deploy/nginx/`` and ``deploy/systemd/`` are templates with
``${OMR_...}`` placeholders; nginx's own ``$variables`` are left alone. The
values come from the install's environment file (the same file every OMR
process reads, so nginx's body caps follow ``OMR_MAX_UPLOAD_MB`` and
``OMR_TUS_MAX_CHUNK_MB`` and nginx serves the ``STATIC_ROOT`` that
``collectstatic`` fills) and from the options below.

    python3 deploy/render.py --env /etc/omr/omr.env --out /tmp/omr-deploy
    # then: /tmp/omr-deploy/nginx/* -> /etc/nginx/ (see docs/deploy.md),
    #       /tmp/omr-deploy/systemd/* -> /etc/systemd/system/

Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"\$\{(OMR_[A-Z0-9_]+)\}")
# Room above the application's own limit: the multipart envelope of a plain
# upload, and tus's headers, are not counted by the application.
BODY_HEADROOM_MB = 1


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile reads them (comments
    and blank lines skipped, one pair of surrounding quotes removed)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SystemExit(f"error: {path}: not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def whole_mb(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "") or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"error: {name} must be a whole number of MB, not {raw!r}")
    return int(raw)


def placeholders(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    root = Path(args.root).resolve()
    static_root = env.get("STATIC_ROOT") or str(Path(env.get("OMR_VAR_DIR") or root / "var") / "static")
    server_name = args.server_name or (env.get("ALLOWED_HOSTS", "").split(",")[0].strip() or "_")
    tls_dir = f"/etc/letsencrypt/live/{server_name}"
    return {
        "OMR_ROOT": str(root),
        "OMR_USER": args.user,
        "OMR_ENV_FILE": str(Path(args.env).resolve()),
        "OMR_WORKER_PROCESSES": str(args.worker_processes),
        "OMR_SERVER_NAME": server_name,
        "OMR_LISTEN_HTTPS": args.listen_https,
        "OMR_LISTEN_HTTP": args.listen_http,
        "OMR_TLS_CERT": args.tls_cert or f"{tls_dir}/fullchain.pem",
        "OMR_TLS_KEY": args.tls_key or f"{tls_dir}/privkey.pem",
        "OMR_NGINX_DIR": args.nginx_dir,
        "OMR_STATIC_ROOT": static_root.rstrip("/"),
        "OMR_UPSTREAM_SERVERS": "\n".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
                                          for port in args.web_ports),
        "OMR_UPLOAD_BODY_MAX": f"{whole_mb(env, 'OMR_MAX_UPLOAD_MB', 4096) + BODY_HEADROOM_MB}m",
        "OMR_TUS_BODY_MAX": f"{whole_mb(env, 'OMR_TUS_MAX_CHUNK_MB', 64) + BODY_HEADROOM_MB}m",
    }


def render_text(text: str, values: dict[str, str], source: str) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise SystemExit(f"error: {source}: no value for ${{{name}}}")
        return values[name]

    return PLACEHOLDER.sub(fill, text)


def render(args: argparse.Namespace) -> list[Path]:
    env = read_env_file(Path(args.env))
    values = placeholders(args, env)
    written = []
    for folder in ("nginx", "systemd"):
        target = Path(args.out) / folder
        target.mkdir(parents=True, exist_ok=True)
        for template in sorted((DEPLOY / folder).iterdir()):
            if template.is_file():
                out = target / template.name
                out.write_text(render_text(template.read_text(), values, str(template)))
                written.append(out)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the nginx site and systemd units for one install.")
    parser.add_argument("--env", default="/etc/omr/omr.env", help="the install's environment file")
    parser.add_argument("--out", required=True, help="folder to write nginx/ and systemd/ into")
    parser.add_argument("--root", default=str(DEPLOY.parent), help="the checkout with its .venv (default: this one)")
    parser.add_argument("--user", default="omr", help="the system user the services run as")
    parser.add_argument("--server-name", help="nginx server_name (default: the first of ALLOWED_HOSTS)")
    parser.add_argument("--tls-cert", help="certificate chain (default: Let's Encrypt's path for the name)")
    parser.add_argument("--tls-key", help="private key (default: Let's Encrypt's path for the name)")
    parser.add_argument("--listen-https", default="443", help="nginx listen address of the TLS server")
    parser.add_argument("--listen-http", default="80", help="nginx listen address of the redirecting server")
    parser.add_argument("--web-ports", nargs="+", type=int, default=[8001, 8002],
                        help="loopback ports of the Daphne processes (omr-web@PORT)")
    parser.add_argument("--nginx-dir", default="/etc/nginx/snippets",
                        help="where omr-proxy.conf and omr-stream.conf are installed")
    parser.add_argument("--worker-processes", type=int, default=os.cpu_count() or 1,
                        help="Dramatiq processes on this host (default: one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    for path in render(build_parser().parse_args(argv)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
