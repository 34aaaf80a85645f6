"""`lmforge keys`: create, list and revoke the API keys `lmforge serve` accepts.

Mounted by the main CLI (`app.add_typer(keys_app, name="keys")`); errors are raised as
`AuthError` so the main entry point prints them as one `error:` line and exits with 2.
"""

# No `from __future__ import annotations`: typer evaluates string annotations on every run.
import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lmforge.serve.auth import ROLES, KeyStore

console = Console(stderr=False)
err_console = Console(stderr=True)

keys_app = typer.Typer(
    help="Manage the API keys `lmforge serve` accepts (only their hashes are stored).",
    no_args_is_help=True,
)

RegistryOpt = Annotated[
    Path,
    typer.Option("--registry", "-r", help="Registry folder; keys live in its auth.sqlite."),
]
DEFAULT_REGISTRY = Path("runs/demo/registry")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _keys_table() -> Any:
    from rich.table import Table

    table = Table(caption="times in UTC; rate/burst -: the server's default", show_edge=False)
    # Ids are copied into `keys revoke`, and times must stay readable in an 80-column
    # terminal: never fold an id, and let a time wrap at its space rather than be cut.
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold")
    for name in ("role", "rate", "burst"):
        table.add_column(name)
    table.add_column("created", min_width=10)
    table.add_column("revoked", min_width=10)
    return table


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. a team or service.")],
    role: Annotated[
        str, typer.Option(help=f"One of {', '.join(ROLES)} (admin may also predict).")
    ] = "predict",
    rate: Annotated[
        float | None,
        typer.Option(help="Requests/s for this key. Default: serve.auth.default_rate."),
    ] = None,
    burst: Annotated[
        int | None, typer.Option(help="Burst size for this key. Default: serve.auth.default_burst.")
    ] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Create a key and print it once; only its hash is kept."""
    store = KeyStore(registry)
    key, plaintext = store.create(name, role=role, rate=rate, burst=burst)
    limits = f"rate {key.rate if key.rate is not None else 'default'}, "
    limits += f"burst {key.burst if key.burst is not None else 'default'}"
    err_console.print(
        f"created key id {key.key_id} for {key.name!r} (role {key.role}, {limits})",
        markup=False,
        highlight=False,
    )
    # The key alone on stdout, unwrapped, so `KEY=$(lmforge keys create NAME)` captures it.
    console.print(plaintext, markup=False, highlight=False, soft_wrap=True)
    err_console.print(
        "store it now: it is not shown again (only its hash is kept). "
        "Send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
        markup=False,
        highlight=False,
    )


@keys_app.command("list")
def keys_list(registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    """List keys: id, name, role, limits, created and revoked times (never secrets)."""
    store = KeyStore(registry)
    keys = store.list()
    if not keys:
        err_console.print(
            f"no API keys in {store.path}; create one: lmforge keys create NAME -r {registry}",
            markup=False,
            highlight=False,
        )
        return
    table = _keys_table()
    for k in keys:
        table.add_row(
            k.key_id,
            k.name,
            k.role,
            "-" if k.rate is None else f"{k.rate:g}",
            "-" if k.burst is None else str(k.burst),
            _when(k.created_at),
            _when(k.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (see `lmforge keys list`).")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Revoke a key for good; running servers stop accepting it within their key-cache TTL."""
    store = KeyStore(registry)
    key = store.revoke(key_id)
    console.print(
        f"revoked key {key.key_id} ({key.name!r}) at {_when(key.revoked_at)} UTC; "
        "running servers stop accepting it within their key-cache TTL (1 s by default)",
        markup=False,
        highlight=False,
    )
