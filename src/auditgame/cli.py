"""Command line: ``auditgame zoo build | audit | play | serve-mcp | report | list``.

Progress goes to stderr through rich; results go to the store, and to stdout only where the
command's job is to show them (``audit`` prints the finding, ``play`` the leaderboard).

Each command imports what it uses (torch among it) when it runs, so that ``--help`` and a
mistyped option answer at once.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from auditgame import registry
from auditgame.access import Budget
from auditgame.errors import AuditgameError
from auditgame.run import sandbox

if TYPE_CHECKING:
    from auditgame.leaderboard import LeaderRow
    from auditgame.run.base import Executor
    from auditgame.zoo import BuildEvent, Zoo

DATA_DIR = Path("auditgame-data")


def _fits_dir() -> Path:
    """``cache.fits_dir()``, imported when used (the CLI starts without torch)."""
    from auditgame.cache import fits_dir

    return fits_dir()


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="An arena for automated auditing of model internals.",
)
zoo_app = typer.Typer(no_args_is_help=True, help="Build zoos of organisms.")
app.add_typer(zoo_app, name="zoo")
err = Console(stderr=True)
out = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


EXIT_USAGE = 2
"""A bad command line, input file or model: nothing was audited."""
EXIT_AUDITOR_FAILED = 3
"""An auditor failed on the model: its finding carries the error and no probability."""


def _fail(exc: Exception) -> None:
    err.print("[bold red]error:[/]", end=" ")
    err.print(str(exc), markup=False, soft_wrap=True, highlight=False)
    raise typer.Exit(code=EXIT_USAGE)


# A parameter is a number, a word or a small JSON value, never a payload.
MAX_PARAM_CHARS = 65536


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param takes NAME=VALUE, got {pair[:80]!r}")
        if len(value) > MAX_PARAM_CHARS:
            raise typer.BadParameter(f"--param {name[:40]}: over {MAX_PARAM_CHARS} characters")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
        except RecursionError:
            raise typer.BadParameter(f"--param {name[:40]}: JSON nested too deeply") from None
    return params


def _auditor_params(pairs: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``play``'s ``--param AUDITOR.NAME=VALUE``: parameters per auditor of the game."""
    by_auditor: dict[str, dict[str, Any]] = {}
    for dotted, value in _parse_params(pairs).items():
        name, dot, key = dotted.partition(".")
        if not dot or not key:
            raise typer.BadParameter(f"--param takes AUDITOR.NAME=VALUE, got {dotted[:80]!r}")
        if name not in names:
            raise typer.BadParameter(
                f"--param {dotted[:80]}: {name[:40]!r} is not an auditor of this game "
                f"({', '.join(names)})"
            )
        by_auditor.setdefault(name, {})[key] = value
    return by_auditor


def _build(
    family: str,
    n: int,
    seed: int | None,
    out_dir: Path,
    key: Path | None,
    workers: int,
    attacks: list[str] | None = None,
) -> Zoo:
    from auditgame.zoo import build_zoo

    with _progress() as progress:
        bar = progress.add_task(f"planting {family} organisms", total=n)

        def on_event(event: BuildEvent) -> None:
            if event.dropped:
                err.print(f"[yellow]dropped[/] slot {event.index}: {event.dropped}")
            progress.advance(bar)

        return build_zoo(
            family,
            n,
            seed,
            out_dir,
            key_path=key,
            attacks=attacks or None,
            workers=workers,
            on_event=on_event,
        )


@zoo_app.command("build")
def zoo_build(
    out_dir: Annotated[Path, typer.Option("--out", help="zoo folder to create")],
    family: Annotated[str, typer.Option(help="model family")] = "digits",
    n: Annotated[int, typer.Option("--n", help="organisms; half are backdoored")] = 24,
    seed: Annotated[
        int | None,
        typer.Option(
            help="determines every organism, so anyone who knows it knows every secret "
            "(default: drawn from the key)"
        ),
    ] = None,
    key: Annotated[Path | None, typer.Option(help="key file (default: OUT.key)")] = None,
    workers: Annotated[int, typer.Option(help="parallel processes")] = 0,
    attack: Annotated[
        list[str] | None, typer.Option(help="attacks sharing the backdoored half (repeat)")
    ] = None,
) -> None:
    """Build a zoo: organisms with public cards, secrets sealed under a key kept beside it."""
    from auditgame.zoo import default_key_path

    try:
        zoo = _build(family, n, seed, out_dir, key, workers or _cores(), attack)
    except (AuditgameError, ValueError) as exc:
        _fail(exc)
    err.print(
        f"zoo {zoo.root}: {len(zoo.ids)} organisms, {len(zoo.manifest.dropped)} dropped; "
        f"key {key or default_key_path(zoo.root)}"
    )


@app.command()
def audit(
    path: Annotated[
        Path, typer.Argument(help="an organism folder (in a zoo), or your own model with --spec")
    ],
    spec: Annotated[
        Path | None, typer.Option(help="spec file of a model outside a zoo (YAML)")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="MODULE:CLASS, the nn.Module of PATH's safetensors")
    ] = None,
    hf: Annotated[bool, typer.Option("--hf", help="PATH is a Hugging Face model folder")] = False,
    auditor: Annotated[
        str | None,
        typer.Option(help="registered auditor name (default: neural_cleanse, or the spec's)"),
    ] = None,
    param: Annotated[list[str] | None, typer.Option(help="auditor parameter NAME=VALUE")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    seconds: Annotated[float, typer.Option(help="the auditor's time budget")] = 120.0,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="also write the JSON to this file")
    ] = None,
) -> None:
    """Audit one organism blind, or your own model against your spec; print JSON. Exit code 3
    when an auditor failed (its finding has the error and p_violation null), 2 on bad input."""
    try:
        if out_file is not None and not out_file.parent.is_dir():
            raise AuditgameError(f"--out {out_file}: folder {out_file.parent} does not exist")
        params = _parse_params(param or [])
        budget = Budget(seconds=seconds)
        if spec is not None:
            result = _audit_own(path, spec, arch, hf, auditor, params, budget, seed)
        elif arch is not None or hf or path.is_file():
            raise AuditgameError(
                f"{path}: to audit a model outside a zoo, add --spec SPEC.yaml and "
                "--arch MODULE:CLASS (or --hf); see docs/audit-your-model.md"
            )
        else:
            result = _audit_organism(path, auditor or "neural_cleanse", params, budget, seed)
    except (AuditgameError, TypeError, ValueError) as exc:
        _fail(exc)
    text = json.dumps(result)
    if out_file is not None:
        _write_atomic(out_file, text + "\n")
    out.print_json(text)
    findings = result.get("findings", [result])
    failed = [f["auditor"] for f in findings if f.get("error") is not None]
    if failed:
        err.print(
            f"[bold red]error:[/] {', '.join(failed)} failed (p_violation null): no verdict",
            soft_wrap=True,
        )
        raise typer.Exit(code=EXIT_AUDITOR_FAILED)


def _audit_organism(
    path: Path, auditor: str, params: dict[str, Any], budget: Budget, seed: int
) -> dict[str, Any]:
    from auditgame.fitting import fit_here
    from auditgame.organism import Organism
    from auditgame.run.task import check_witness, make_subject

    organism = Organism.open(path)
    cls = registry.get("auditor", auditor)
    if cls.is_dynamic():
        raise AuditgameError(
            f"{auditor} is a dynamic baseline: it needs run-time traffic, which only "
            "`auditgame play` prepares"
        )
    instance = cls(**params)
    fit_here(instance, organism.card.family, _fits_dir())
    subject = make_subject(organism, cls.access, budget, reference=cls.reference)
    finding = instance.audit(subject, budget, seed=seed)
    check = check_witness(organism, finding)
    result = finding.model_dump(mode="json")
    result["witness"] = (
        {"asr": check.asr, "in_threat_model": check.in_threat_model}
        if check is not None
        else {"asr": None, "in_threat_model": None}
    )
    return result


def _audit_own(
    path: Path,
    spec: Path,
    arch: str | None,
    hf: bool,
    auditor: str | None,
    params: dict[str, Any],
    budget: Budget,
    seed: int,
) -> dict[str, Any]:
    from auditgame.user.audit import audit_own_model

    audited = audit_own_model(
        path,
        spec,
        arch=arch,
        hf=hf,
        auditor=auditor,
        params=params,
        budget=budget,
        seed=seed,
        fit_root=_fits_dir(),
        on_start=lambda name: err.print(f"auditing {path} with {name}"),
    )
    for line in audited.summary():
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    return audited.to_json()


def _write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a temporary file beside ``path``, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


def _executor(name: ExecutorName, workers: int, address: str | None, ship: bool) -> Executor:
    """The executor ``play`` hands its tasks to; Ray is imported only when asked for."""
    from auditgame.run.local import LocalExecutor

    if name is ExecutorName.local:
        if address is not None or ship:
            raise AuditgameError("--address and --ship-files apply to --executor ray only")
        return LocalExecutor(workers)
    from auditgame.run.ray import RayExecutor

    return RayExecutor(address=address, num_cpus=workers, ship_files=ship)


def _default_auditors(zoo: Zoo) -> list[str]:
    """The auditors ``play`` runs unless told: the family's own choice where it makes one
    and the zoo holds it to the family's own spec, else those of the zoo's violation kind."""
    fam = registry.get("family", zoo.family)
    spec = zoo.spec()
    if fam.default_auditors is not None and spec.threat_model.kind == fam.violation:
        return list(fam.default_auditors)
    return list(spec.kind.default_auditors)


@app.command("play")
def play_cmd(
    family: Annotated[str, typer.Option()] = "digits",
    n: Annotated[int, typer.Option("--n", help="organisms in the zoo")] = 24,
    seed: Annotated[
        int | None,
        typer.Option(
            help="zoo and game seed; a zoo built from a known seed keeps no secret (default: "
            "the zoo's seed drawn from its key, game seed 0)"
        ),
    ] = None,
    auditor: Annotated[list[str] | None, typer.Option(help="auditors (repeat)")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="an auditor's parameter AUDITOR.NAME=VALUE (repeat; e.g. "
            "weight_stats.calibrate=false: its published threshold, no fit)"
        ),
    ] = None,
    attack: Annotated[
        list[str] | None,
        typer.Option(help="attacks of the zoo built here (repeat; default: the family's)"),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="parallel processes, or a local Ray cluster's CPUs (0: all cores)")
    ] = 0,
    store: Annotated[Path, typer.Option(help="SQLite results")] = DATA_DIR / "results.sqlite",
    zoo: Annotated[Path | None, typer.Option(help="zoo folder (default: built here)")] = None,
    key: Annotated[Path | None, typer.Option(help="the zoo's key (default: ZOO.key)")] = None,
    seconds: Annotated[float, typer.Option(help="each auditor's time budget")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="print rows as JSON")] = False,
    executor: Annotated[
        ExecutorName, typer.Option(help="where tasks run: local processes or Ray")
    ] = ExecutorName.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: start a local one)")
    ] = None,
    ship_files: Annotated[
        bool, typer.Option(help="Ray: send organisms via the object store (no shared filesystem)")
    ] = False,
) -> None:
    """Build or reuse a zoo, audit every organism blind, judge, and print the leaderboard."""
    from auditgame.game import AuditorSpec, Game, describe_auditors, fits_root, play
    from auditgame.leaderboard import leaderboard
    from auditgame.run.sealed import fit_record
    from auditgame.store import Store
    from auditgame.zoo import Zoo, open_key

    workers = workers or _cores()
    suffix = "".join(f"-{a}" for a in attack or [])
    built = "keyed" if seed is None else f"s{seed}"
    zoo_dir = zoo or DATA_DIR / "zoos" / f"{family}-n{n}-{built}{suffix}"
    try:
        if zoo is not None and attack:
            raise AuditgameError("--attack builds a zoo; an existing --zoo has its attacks")
        runner = _executor(executor, workers, address, ship_files)
        opened = (
            Zoo(zoo_dir)
            if zoo is not None
            else _build(family, n, seed, zoo_dir, key, workers, attack)
        )
        names = auditor or _default_auditors(opened)
        params = _auditor_params(param or [], names)
        secret_key = open_key(opened, key)
        game = Game(
            zoo=zoo_dir,
            auditors=[AuditorSpec(name=a, params=params.get(a, {})) for a in names],
            budget=Budget(seconds=seconds),
            seed=seed or 0,
        )
        with Store(store) as results, _progress() as progress:
            if not sandbox.sealed():
                err.print(f"[bold red]{sandbox.UNSEALED_WARNING}[/]")
            infos = list(describe_auditors(game, results).values())
            threat = opened.spec().threat_model.kind
            playing = [i for i in infos if i.audits(threat)]
            for info in infos:
                if not info.supports:
                    why = f"it does not examine {opened.family}"
                elif not info.audits(threat):
                    why = f"it looks for {', '.join(info.threats or ())}, not {threat}"
                else:
                    continue
                err.print(f"[yellow]skipped[/] {info.name}: {why}")
            if not playing:
                raise AuditgameError(
                    f"no auditor of this game examines family {opened.family} for {threat}; name "
                    "one with --auditor (`auditgame list auditors` shows what each examines)"
                )
            todo = len(opened.ids) * len(playing) - len(results.finished(game.id))
            fits = fits_root(results)
            for info in playing:
                recorded = fit_record(info, opened.family, fits)
                if todo and info.fitted and not recorded.is_file():
                    err.print(
                        f"fitting {info.name} for {opened.family} before auditing (once; "
                        f"cached under {fits}): the first time, this trains the family's clean "
                        "reference models or the auditor's shadow zoo"
                    )
            bar = progress.add_task("auditing", total=todo)
            game_id = play(
                game,
                secret_key,
                results,
                runner,
                on_score=lambda _: progress.advance(bar),
            )
            rows = leaderboard(results.scores(game_id))
    except (AuditgameError, ValueError) as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json") for r in rows]))
    else:
        _print_leaderboard(rows)
        err.print(f"game {game_id}; results in {store}")


@app.command()
def report(
    store: Annotated[Path, typer.Option(help="SQLite results")] = DATA_DIR / "results.sqlite",
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.md/.html")] = Path(
        "auditgame-report"
    ),
    game: Annotated[str | None, typer.Option(help="one game id (default: the latest)")] = None,
    all_games: Annotated[bool, typer.Option("--all", help="every game in the store")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="then serve it on 127.0.0.1")] = False,
    port: Annotated[int, typer.Option(help="port for --serve (0: a free one)")] = 0,
) -> None:
    """Write the markdown and self-contained HTML report from the store (and serve it)."""
    from auditgame.report import report_server, report_url, write_report
    from auditgame.store import Store

    if not store.is_file():
        _fail(AuditgameError(f"{store}: no results store here; run `auditgame play` first"))
    with Store(store) as results:
        games = results.games()
        if game is None and not all_games and games:
            game = games[-1]["game_id"]
        try:
            md, html = write_report(results, out_dir, game)
        except ValueError as exc:
            _fail(exc)
    err.print(f"wrote {md} and {html}")
    if serve:
        try:
            server = report_server(out_dir, port)
        except OSError as exc:
            _fail(AuditgameError(f"cannot serve on port {port}: {exc}"))
        out.print(report_url(server), highlight=False, soft_wrap=True)
        err.print("serving; Ctrl-C stops")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


@app.command()
def reveal(
    zoo: Annotated[Path, typer.Option(help="the zoo folder")],
    key: Annotated[Path | None, typer.Option(help="the zoo's key (default: ZOO.key)")] = None,
    store: Annotated[Path, typer.Option(help="SQLite results")] = DATA_DIR / "results.sqlite",
) -> None:
    """Write the zoo's secrets into the store's rows of every game played on it.

    ``play`` does this itself when a game's last pair is judged; this is for a game stopped
    early whose report should show the planted triggers anyway."""
    from auditgame.store import Store
    from auditgame.zoo import Zoo, open_key

    try:
        opened = Zoo(zoo)
        secret_key = open_key(opened, key)
        opened.check_key(secret_key)
        secrets = {oid: opened.secret(oid, secret_key) for oid in opened.ids}
        build = opened.manifest.build_fingerprint
        with Store(store) as results:
            games = [g["game_id"] for g in results.games()
                     if g["description"].get("zoo_build") == build]  # fmt: skip
            updated = sum(results.reveal(g, secrets) for g in games)
    except AuditgameError as exc:
        _fail(exc)
    err.print(f"revealed {len(secrets)} secrets in {updated} rows of {len(games)} game(s)")


class AgentAccess(StrEnum):
    weights = "weights"
    clean_data = "clean_data"


@app.command("serve-mcp")
def serve_mcp(
    zoo: Annotated[Path, typer.Argument(help="the zoo the agent audits, organism by organism")],
    agent: Annotated[str, typer.Option(help="the agent's name; rows are agent:NAME")] = "mcp",
    key: Annotated[Path | None, typer.Option(help="the zoo's key (default: ZOO.key)")] = None,
    store: Annotated[Path, typer.Option(help="SQLite results")] = DATA_DIR / "results.sqlite",
    access: Annotated[
        AgentAccess, typer.Option(help="what the tools hand out")
    ] = AgentAccess.clean_data,
    base_model: Annotated[
        bool, typer.Option(help="give the agent the family's base model (reported apart)")
    ] = False,
    calls: Annotated[int, typer.Option(help="tool calls per organism")] = 200,
    tokens: Annotated[int, typer.Option(help="generated tokens per organism")] = 20_000,
    seconds: Annotated[float, typer.Option(help="seconds inside tools per organism")] = 300.0,
    seed: Annotated[int, typer.Option(help="seeds sampling tools and the auditors run")] = 0,
    organism: Annotated[
        str | None,
        typer.Option(
            help="serve this one organism of the game (one Inspect sample); stopping without "
            "a finding then records a failed one"
        ),
    ] = None,
) -> None:
    """Serve an agent's audit of ZOO over MCP (stdio): point an MCP client at this command.

    The agent questions each organism through the tools and submits one finding per organism,
    which is judged and stored as in a game (docs/agents.md). Stdout carries the protocol;
    messages go to stderr. Run it again with the same options to resume."""
    from auditgame.access import Access
    from auditgame.agents.serve import mcp_server
    from auditgame.agents.session import AgentGame, AuditSession
    from auditgame.agents.tools import ToolBudget
    from auditgame.store import Store
    from auditgame.zoo import Zoo, open_key

    try:
        opened = Zoo(zoo)
        game = AgentGame(
            zoo=zoo,
            agent=agent,
            access=Access[access.name.upper()],
            reference=base_model,
            budget=ToolBudget(calls=calls, tokens=tokens, seconds=seconds),
            seed=seed,
        )
        secret_key = open_key(opened, key)
        if not sandbox.sealed():
            err.print(f"[bold red]{sandbox.UNSEALED_WARNING}[/]")
        with (
            Store(store) as results,
            AuditSession(game, secret_key, results, only=organism) as session,
        ):
            err.print(f"serving {game.auditor} on {zoo} (game {game.id}) over MCP stdio")
            mcp_server(session).run("stdio")
    except (AuditgameError, ValueError, ImportError) as exc:
        _fail(exc)


@app.command("list")
def list_cmd(
    kind: Annotated[str, typer.Argument(help="families, attacks or auditors")] = "auditors",
) -> None:
    """List what is registered, built-in and from plugins."""
    kinds: dict[str, registry.Kind] = {
        "families": "family",
        "attacks": "attack",
        "auditors": "auditor",
    }
    if kind not in kinds:
        _fail(AuditgameError(f"list takes one of {', '.join(kinds)}, not {kind!r}"))
    table = Table("name", "details")
    for name in registry.names(kinds[kind]):
        details = ""
        if kind == "auditors":
            cls = registry.get("auditor", name)
            details = f"{'/'.join(cls.modalities)} models, access {cls.access.name}" + (
                " (dynamic baseline)" if cls.is_dynamic() else ""
            )
        table.add_row(name, details)
    out.print(table)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _print_leaderboard(rows: list[LeaderRow]) -> None:
    from auditgame.leaderboard import ALL, recovery_columns

    for dynamic in (False, True):
        chosen = [r for r in rows if r.dynamic is dynamic]
        if not chosen:
            continue
        title = (
            "dynamic baselines (see run-time traffic; an easier question)"
            if dynamic
            else "static auditors"
        )
        table = Table(title=title)
        metrics = recovery_columns(chosen)
        for column in (
            "auditor",
            "family",
            "attack",
            "n",
            "AUROC [95% CI]",
            "TPR@5%FPR",
            "FPR@0.5",
            "CE",
            "Brier",
            "target acc",
            "witness ASR",
            *(label for _, label in metrics),
            "s/org",
            "errors",
        ):
            table.add_column(column)
        for r in chosen:
            ci = f" [{r.auroc_ci[0]:.2f}, {r.auroc_ci[1]:.2f}]" if r.auroc_ci else ""
            table.add_row(
                f"{r.auditor} (reference)" if r.reference else r.auditor,
                r.family,
                r.attack,
                str(r.n),
                _fmt(r.auroc) + ci,
                _fmt(r.tpr_at_5fpr, 2),
                _fmt(r.fpr_at_threshold, 2),
                _fmt(r.cross_entropy),
                _fmt(r.brier),
                _fmt(r.target_acc, 2),
                _fmt(r.witness_asr, 2),
                *(_fmt(r.recovery.get(name), 2) for name, _ in metrics),
                _fmt(r.seconds_per_organism, 1),
                str(r.errors),
            )
        Console(width=max(out.width, 170)).print(table)
    natural: dict[str, int] = {}
    for r in rows:
        if r.attack == ALL and r.n_natural:
            natural[r.family] = max(natural.get(r.family, 0), r.n_natural)
    for family, n in sorted(natural.items()):
        found = {r.auditor: r.natural_found for r in rows if r.family == family and r.attack == ALL}
        who = ", ".join(f"{a} {k}" for a, k in sorted(found.items()) if k)
        err.print(
            f"natural violations: {n} clean {family} organism(s) proved by a witness to violate "
            f"the spec ({who}); detection scores the planting, so flags on them count as false "
            "alarms (docs/metrics.md)"
        )
    unsealed = {r.auditor for r in rows if r.unsealed}
    if unsealed:
        err.print(
            f"[bold red]UNSEALED[/]: {', '.join(sorted(unsealed))} ran without a sandbox; "
            "their scores hold for trusted auditors only (docs/security.md)"
        )
    else:
        err.print("sealed: every auditor ran in its sandbox (docs/security.md)")


def _cores() -> int:
    import os

    return os.cpu_count() or 1
