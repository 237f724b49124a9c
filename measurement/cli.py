"""``advisor measure``: run the measurement harness on this machine's GPU.

Wire it into the main CLI with ``from measurement.cli import measure_command`` and
``cli.add_command(measure_command, name="measure")`` (import lazily: this module imports no torch at
import time, but the harness it drives does). Also runnable as ``python -m measurement.cli``.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
from pathlib import Path

import click

from .backends import REGIONAL_MODES
from .dataset import DEFAULT_COMPILE_MODE
from .store import default_method

SWEEP_KEYS = ("model", "precision", "sparsity", "kv", "kv_budget", "backend", "batch", "prompt_len", "gen_len",
              "weights", "trials", "warmup", "compile_mode")
COMPILE_MODES = REGIONAL_MODES + ("reduce-overhead", "max-autotune", "default", "none")  # + whole-step compile
_DROP = re.compile(r"^drop-(\d+)$")


def _csv(s) -> list[str]:
    if s is None:
        return []
    if isinstance(s, (list, tuple)):
        return [str(x).strip() for x in s if str(x).strip()]
    return [x.strip() for x in str(s).split(",") if x.strip()]


def _ints(s, name: str) -> list[int]:
    out = []
    for x in _csv(s):
        try:
            v = int(x)
        except ValueError:
            raise click.BadParameter(f"'{x}' is not an integer", param_hint=name) from None
        if v <= 0:
            raise click.BadParameter(f"{v} must be positive", param_hint=name)
        out.append(v)
    return out


def user_data_dir() -> Path:
    """Where a sweep without --out writes: $XDG_DATA_HOME/advisor, else ~/.local/share/advisor (never the
    package's folder, which is site-packages after a pip install)."""
    import os
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "advisor"


def _catalog():
    from profiles import load

    return load()


def resolve_model(name: str, cat) -> str:
    from profiles.catalog import UnknownProfileError

    try:
        return cat.resolve("model", name).id
    except UnknownProfileError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None


def resolve_method(name: str, kind: str, cat) -> str:
    """A method id of ``kind`` (precision|sparsity|kv); drop-N is a sparsity with N layers. A catalogued method
    the harness does not implement is still measured, as an 'unsupported' row."""
    from profiles.catalog import UnknownProfileError

    from .sparsity import drops_layers

    n = name.strip().lower()
    if kind == "sparsity" and _DROP.match(n):
        return n
    try:
        mid = cat.resolve("method", name).id
    except UnknownProfileError as e:
        extra = " (drop-N, e.g. drop-8, removes N layers)" if kind == "sparsity" else ""
        raise click.BadParameter(str(e) + extra, param_hint=f"--{kind.replace('_', '-')}") from None
    m = cat.methods[mid]
    if m.kind != kind:
        raise click.BadParameter(f"'{name}' is a {m.kind} method, not a {kind} method", param_hint=f"--{kind}")
    if drops_layers(mid):
        raise click.BadParameter("name the number of layers to drop: drop-N (e.g. drop-8)", param_hint="--sparsity")
    return mid


def expand_grid(grid: dict, cat, defaults: dict | None = None) -> list:
    """One sweep grid (lists or scalars per key) -> RunConfigs (cartesian product, validated)."""
    from .store import RunConfig

    g = dict(defaults or {})
    g.update(grid)
    unknown = set(g) - set(SWEEP_KEYS)
    if unknown:
        raise click.BadParameter(f"unknown sweep keys: {', '.join(sorted(unknown))} (known: {', '.join(SWEEP_KEYS)})")
    models = [resolve_model(m, cat) for m in _csv(g.get("model"))]
    if not models:
        raise click.BadParameter("at least one model is needed", param_hint="--model")
    precs = [resolve_method(p, "precision", cat) for p in _csv(g.get("precision", default_method("precision")))]
    sps = [resolve_method(s, "sparsity", cat) for s in _csv(g.get("sparsity", default_method("sparsity")))]
    kvs = [resolve_method(k, "kv", cat) for k in _csv(g.get("kv", default_method("kv")))]
    budgets = _ints(g.get("kv_budget"), "--kv-budget") if g.get("kv_budget") not in (None, "") else []
    backends = _csv(g.get("backend", "compiled"))
    for b in backends:
        if b not in ("eager", "compiled"):
            raise click.BadParameter(f"unknown backend '{b}' (eager, compiled)", param_hint="--backend")
    batches = _ints(g.get("batch", 1), "--batch")
    prompts = _ints(g.get("prompt_len", 512), "--prompt-len")
    gens = _ints(g.get("gen_len", 128), "--gen-len")
    weights = g.get("weights", "random") or "random"
    _check_weights(weights)
    trials = int(g.get("trials", 3))
    warmup = int(g.get("warmup", 1))
    mode = g.get("compile_mode", DEFAULT_COMPILE_MODE)
    if mode not in COMPILE_MODES:
        raise click.BadParameter(f"unknown compile mode '{mode}' ({', '.join(COMPILE_MODES)})",
                                 param_hint="--compile-mode")
    from .kv_cache import KV_EVICT

    out = []
    for m, p, s, k, be, b, pl, gl in itertools.product(models, precs, sps, kvs, backends, batches, prompts, gens):
        evict = k in KV_EVICT
        for kb in (budgets or [None]) if evict else [None]:
            if evict and kb is None:
                raise click.BadParameter(f"{k} needs --kv-budget", param_hint="--kv-budget")
            out.append(RunConfig(model=m, precision=p, sparsity=s, kv=k, kv_budget=kb, backend=be, batch=b,
                                 prompt_len=pl, gen_len=gl, weights=str(weights), trials=trials, warmup=warmup,
                                 compile_mode=mode))
    return out


def _check_weights(weights: str) -> None:
    if weights in ("random", "", None):
        return
    p = Path(weights)
    if p.exists():
        if not p.is_dir() or not list(p.glob("*.safetensors")):
            raise click.BadParameter(f"{p}: needs a directory with config.json and *.safetensors "
                                     "(pickled checkpoints are never loaded)", param_hint="--weights")
        return
    if not re.match(r"^[\w.-]+/[\w.-]+$", weights):
        raise click.BadParameter(f"'{weights}' is neither 'random', an existing directory, nor a hub id "
                                 "(owner/name)", param_hint="--weights")


MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 100


def safe_yaml(p: Path, opt: str):
    """A user's YAML: a regular file under 1 MiB, the safe loader, at most MAX_YAML_ALIASES alias uses (an
    alias bomb of a few hundred bytes can otherwise expand to gigabytes); errors name the file."""
    import yaml

    if not p.is_file():
        raise click.BadParameter(f"{p}: not a regular file", param_hint=opt)
    if p.stat().st_size > MAX_YAML_BYTES:
        raise click.BadParameter(f"{p}: over {MAX_YAML_BYTES} bytes", param_hint=opt)

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_YAML_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases")
            return super().compose_node(parent, index)

    try:
        doc = yaml.load(p.read_text(encoding="utf-8", errors="strict"), Loader=Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{p}: not valid YAML ({str(e).splitlines()[0][:160]})", param_hint=opt) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise click.BadParameter(f"{p}: the top level must be a mapping with 'grids'", param_hint=opt)
    return doc


def load_sweep(path: str, cat) -> tuple[list, dict]:
    p = Path(path)
    if not p.exists():
        raise click.BadParameter(f"{path}: no such file", param_hint="--sweep")
    doc = safe_yaml(p, "--sweep")
    grids = doc.get("grids")
    if not isinstance(grids, list) or not grids:
        raise click.BadParameter(f"{path}: needs a non-empty 'grids' list", param_hint="--sweep")
    defaults = doc.get("defaults") or {}
    configs, seen = [], set()
    for grid in grids:
        for rc in expand_grid(grid, cat, defaults):
            if rc not in seen:
                seen.add(rc)
                configs.append(rc)
    return configs, doc


SUMMARY_COLS = [("model", "model"), ("precision", "prec"), ("sparsity", "sparsity"), ("kv", "kv"),
                ("kv_budget", "budget"), ("backend", "backend"), ("batch", "B"), ("prompt_len", "P"),
                ("status", "status"), ("decode_ms_per_token", "ms/tok"), ("decode_tok_s", "tok/s"),
                ("decode_roofline_frac", "roof"), ("decode_spread_pct", "spread%"), ("prefill_ms", "prefill ms"),
                ("peak_mem_gb", "peak GB"), ("j_per_token", "J/tok")]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def summary_table(rows: list[dict]):
    from rich.table import Table

    t = Table(title=f"{len(rows)} rows", show_lines=False)
    for _, h in SUMMARY_COLS:
        t.add_column(h)
    for r in rows:
        t.add_row(*[_fmt(r.get(k)) for k, _ in SUMMARY_COLS])
    return t


def plain_table(rows: list[dict]) -> str:
    lines = ["  ".join(h for _, h in SUMMARY_COLS)]
    for r in rows:
        lines.append("  ".join(_fmt(r.get(k)) for k, _ in SUMMARY_COLS))
    return "\n".join(lines)


@click.command("measure", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "models", help="Model ids, comma-separated (profiles/data/llms.yaml), e.g. llama3.1-8b.")
@click.option("--precision", default=default_method("precision"), show_default=True,
              help="fp16,bf16,fp8,bnb-int8,int8-wo,w8a8,bnb-nf4,awq-int4,gptq-int4 (comma-separated).")
@click.option("--sparsity", default=default_method("sparsity"), show_default=True,
              help="dense, 2:4-magnitude, 2:4-wanda, drop-N.")
@click.option("--kv", default=default_method("kv"), show_default=True,
              help="kv-fp16, kv-fp8, kv-int8, kv-int4, kv-int2, streamingllm, snapkv, pyramidkv.")
@click.option("--kv-budget", default=None, help="KV token budgets for eviction policies (comma-separated).")
@click.option("--batch", default="1", show_default=True, help="Batch sizes (comma-separated).")
@click.option("--prompt-len", default="512", show_default=True, help="Prompt lengths in tokens (comma-separated).")
@click.option("--gen-len", default="128", show_default=True, help="Decoded tokens per timed window.")
@click.option("--weights", default="random", show_default=True,
              help="random (profile architecture), a local directory with safetensors, or a hub id.")
@click.option("--backend", default="compiled", show_default=True, help="eager, compiled (comma-separated).")
@click.option("--trials", default=3, show_default=True, type=int, help="Timed trials after warm-up.")
@click.option("--compile-mode", default=DEFAULT_COMPILE_MODE, show_default=True,
              help="compiled backend: regional-graph-fused (one compiled decoder layer + one CUDA graph per "
                   "step, merged q|k|v and gate|up weights), regional-graph-fused-cdt (plus inductor's coordinate-"
                   "descent tuning), regional-graph-nocompile (merged, CUDA graph, no inductor: for 2:4, whose "
                   "compile takes ~60 s per shape class), regional-graph (unmerged), "
                   "regional (no graph), or a torch.compile mode of the whole transformers step "
                   "(reduce-overhead, max-autotune, default, none).")
@click.option("--sweep", "sweep", type=click.Path(dir_okay=False), default=None,
              help="A sweep YAML (see measurement/sweeps/); replaces the grid options.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output folder (rows.jsonl, log); reusing it resumes. Default: the per-user data folder, "
                   "$XDG_DATA_HOME/advisor/measure-<date> (~/.local/share/advisor/...), said on stderr.")
@click.option("--launcher", type=click.Choice(["inprocess", "subprocess"]), default="subprocess", show_default=True,
              help="subprocess: one child per model, so an OOM or crash stays isolated.")
@click.option("--time-budget", type=float, default=None,
              help="Seconds after which no new config starts (resume later to finish).")
@click.option("--import-dataset", "import_dataset", is_flag=True,
              help="Append the rows to measurement/data/measurements.csv afterwards.")
@click.option("--gpus", default=None,
              help="Spread the sweep over these GPUs of this machine, one worker process each (e.g. 0,1,2,3); "
                   "with --ray alone, the GPUs the local Ray cluster declares.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Spread the sweep over the GPUs of a Ray cluster: --ray ADDRESS, or --ray alone for a local "
                   "cluster (needs `pip install ray`). One task per GPU; rows stream back into --out.")
@click.option("--fake-backend", is_flag=True, hidden=True, help="Tests: made-up rows instead of the harness.")
@click.option("--dry-run", is_flag=True, help="Validate and list the configs, run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Rows as JSON on stdout.")
def measure_command(models, precision, sparsity, kv, kv_budget, batch, prompt_len, gen_len, weights, backend, trials,
                    compile_mode, sweep, out, launcher, time_budget, import_dataset, gpus, ray_address, fake_backend,
                    dry_run, as_json):
    """Measure speed, memory and energy of models x methods on this machine's GPU."""
    from rich.console import Console

    err = Console(stderr=True, width=None if sys.stderr.isatty() else 220)
    cat = _catalog()
    doc = {}
    if sweep:
        configs, doc = load_sweep(sweep, cat)
        if time_budget is None and doc.get("time_budget_s"):
            time_budget = float(doc["time_budget_s"])
    else:
        if not models:
            raise click.UsageError("give --model (or --sweep FILE.yaml)")
        configs = expand_grid({"model": models, "precision": precision, "sparsity": sparsity, "kv": kv,
                               "kv_budget": kv_budget, "backend": backend, "batch": batch, "prompt_len": prompt_len,
                               "gen_len": gen_len, "weights": weights, "trials": trials,
                               "compile_mode": compile_mode}, cat)
    if dry_run:
        for rc in configs:
            err.print(rc)
        if as_json:
            import dataclasses

            click.echo(json.dumps([dataclasses.asdict(rc) for rc in configs], indent=1))
        err.print(f"{len(configs)} configs")
        return
    # absolute: the worker processes run from the package's folder (site-packages after a pip install), so a
    # relative path would land there
    out_dir = Path(out or user_data_dir() / f"measure-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    err.print(f"writing to {out_dir}")
    # one sweep per output folder at a time: a second one exits here instead of measuring everything twice
    from filelock import FileLock, Timeout

    sweep_lock = FileLock(str(out_dir / "sweep.lock"), timeout=0)
    try:
        sweep_lock.acquire()
    except Timeout:
        raise click.UsageError(f"another sweep is writing to {out_dir} (it holds {out_dir / 'sweep.lock'}); wait for "
                               "it to finish, or give another --out") from None
    fh = logging.FileHandler(out_dir / "log.txt")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    lg = logging.getLogger("measurement")
    lg.addHandler(fh)
    lg.setLevel(logging.INFO)
    deadline = time.time() + time_budget if time_budget else None
    rows: list[dict] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as prog:
        task = prog.add_task("measuring", total=len(configs))

        def on_row(r):
            rows.append(r)
            prog.advance(task)
            prog.update(task, description=f"{r.get('model')} {r.get('precision')} {r.get('backend')} "
                                          f"B{r.get('batch')} P{r.get('prompt_len')}: {r.get('status')}")
            lg.info("row %s %s ms/tok=%s roof=%s", r.get("key"), r.get("status"),
                    _fmt(r.get("decode_ms_per_token")), _fmt(r.get("decode_roofline_frac")))

        import os

        os.environ.setdefault("ADVISOR_PEAKS_FILE", str(out_dir / "machine_peaks.json"))
        backend_impl = "fake" if fake_backend else "harness"
        if ray_address is not None:
            try:
                import ray  # noqa: F401
            except ImportError:
                raise click.UsageError("--ray needs Ray: pip install ray (or use --gpus on one machine)") from None
            from .scheduler import run_ray

            try:
                n_local = len(_csv(gpus)) if gpus and ray_address == "local" else None  # declared GPUs
                res = run_ray(configs, out_dir, ray_address, backend=backend_impl, num_gpus=n_local, on_row=on_row)
            except RuntimeError as e:
                raise click.UsageError(str(e)) from None
            err.print(f"ray: {res['workers']} tasks, {res['written']} rows written, {res['duplicates']} duplicates skipped")
        elif gpus:
            from .scheduler import run_local

            ids = _csv(gpus)
            if not all(re.fullmatch(r"\d+", g) for g in ids):
                raise click.BadParameter(f"'{gpus}': GPU ids are integers, e.g. 0,1", param_hint="--gpus")
            res = run_local(configs, out_dir, ids, backend=backend_impl, on_row=on_row)
            err.print(f"{res['workers']} workers, {res['written']} rows written, {res['duplicates']} duplicates skipped")
        elif launcher == "subprocess":
            from .launch import SubprocessLauncher

            SubprocessLauncher(out_dir, deadline=deadline, on_row=on_row).run(configs)
        else:
            lg.addHandler(logging.StreamHandler(sys.stderr))
            from .launch import InProcessLauncher

            InProcessLauncher(out_dir, deadline=deadline, on_row=on_row).run(configs)
    if sys.stderr.isatty():
        err.print(summary_table(rows))
    else:
        print(plain_table(rows), file=sys.stderr)
    (out_dir / "summary.txt").write_text(plain_table(rows) + "\n")
    if import_dataset:
        from .dataset import import_rows

        n = import_rows(out_dir / "rows.jsonl")
        err.print(f"imported {n} new rows into measurement/data/measurements.csv")
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=1))


if __name__ == "__main__":  # pragma: no cover
    measure_command()
