"""Running many seeds, and the command line: `python -m kvorum.sim`.

    python -m kvorum.sim --engine raft --seeds 500
    python -m kvorum.sim --engine raft --seed 1234 -v          # replay one seed, one line per event
    python -m kvorum.sim --engine raft --seeds 200 --bug forget-vote
    python -m kvorum.sim --engine raft --seeds 200 --bug commit-old-term --profile figure8

Without `--bug`, every seed must pass: a failing seed prints one line with
what broke and the command that replays it, and the exit status is 1.
With `--bug NAME` the engine runs with that deliberate bug and the run is
expected to catch it: seeds run until one fails, that seed is printed, and
the exit status is 0 (1 if no seed caught it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Callable, Iterable

from kvorum.consensus import engines
from kvorum.consensus.replicated_log import EngineConfigError
from kvorum.sim.history import dump_jsonl
from kvorum.sim.linearizability import Verdict
from kvorum.sim.world import PROFILES, RunResult, SimConfig, World, profile_config


def run_seed(seed: int, config: SimConfig, verbose: Callable[[str], None] | None = None) -> RunResult:
    return World(seed, config, verbose).run()


# Knobs with their own command-line flag; every other knob goes through --set.
_FLAGGED = {"steps": "--steps", "nodes": "--nodes", "lease_reads": "--lease-reads"}
_NESTED = ("network", "clients")
_NOT_KNOBS = ("engine", "profile", "bugs")


def _knobs(config: SimConfig) -> dict[str, Any]:
    """Every scalar knob by dotted name (nested knob groups flattened)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _NESTED:
            for g in dataclasses.fields(value):
                out[f"{f.name}.{g.name}"] = getattr(value, g.name)
        elif f.name not in _NOT_KNOBS:
            out[f.name] = value
    return out


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _parse(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        if raw not in ("on", "off"):
            raise ValueError(f"expected on or off, got {raw!r}")
        return raw == "on"
    if isinstance(like, tuple):
        return tuple(int(v) for v in raw.split(","))
    return type(like)(raw)


def apply_settings(config: SimConfig, settings: list[str]) -> SimConfig:
    """Apply `name=value` overrides (`network.drop_rate=0.1`, `crashes=off`, ...)."""
    knobs = _knobs(config)
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in _NESTED}
    for item in settings:
        name, sep, raw = item.partition("=")
        if not sep or name not in knobs:
            raise ValueError(f"--set {item!r}: knobs are {', '.join(sorted(knobs))}")
        value = _parse(raw, knobs[name])
        group, _, field_name = name.rpartition(".")
        if group:
            nested[group][field_name] = value
        else:
            top[field_name] = value
    for group, values in nested.items():
        if values:
            top[group] = dataclasses.replace(getattr(config, group), **values)
    return dataclasses.replace(config, **top)


def replay_command(seed: int, config: SimConfig) -> str:
    """The command line that reruns exactly this seed with exactly these knobs."""
    parts = [f"python -m kvorum.sim --engine {config.engine} --seed {seed}"]
    if config.profile != "default":
        parts.append(f"--profile {config.profile}")
    base = _knobs(profile_config(config.profile))
    for name, value in _knobs(config).items():
        if value == base[name]:
            continue
        if name in _FLAGGED:
            parts.append(f"{_FLAGGED[name]} {_format(value)}")
        else:
            parts.append(f"--set {name}={_format(value)}")
    for bug in sorted(config.bugs):
        parts.append(f"--bug {bug}")
    return " ".join(parts) + " -v"


def run_seeds(seeds: Iterable[int], config: SimConfig, stop_at_first_failure: bool = False) -> list[RunResult]:
    results = []
    for seed in seeds:
        result = run_seed(seed, config)
        results.append(result)
        if stop_at_first_failure and result.failed:
            break
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvorum.sim", description="deterministic consensus simulator")
    p.add_argument("--engine", default="raft", choices=engines.names())
    p.add_argument("--seeds", type=int, default=1, help="how many seeds to run (from --seed on)")
    p.add_argument("--seed", type=int, default=0, help="first seed (alone: replay this seed)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help="a named set of fault knobs")
    p.add_argument("--steps", type=int, help="events per seed (default: the profile's)")
    p.add_argument("--nodes", type=int, choices=(3, 5), help="initial voters (default: the profile's)")
    p.add_argument("--bug", action="append", default=[], help="run the engine with this deliberate bug")
    p.add_argument("--lease-reads", choices=("on", "off", "mixed"), help="default: the profile's")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="override any knob of SimConfig")
    p.add_argument("--history", help="with one seed: write its client history here as JSONL")
    p.add_argument("-v", "--verbose", action="store_true", help="print one line per event")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    overrides = {"steps": args.steps, "nodes": args.nodes, "lease_reads": args.lease_reads}
    config = profile_config(
        args.profile,
        engine=args.engine,
        bugs=frozenset(args.bug),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    return apply_settings(config, args.set)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = engines.get(args.engine)
    unknown = set(args.bug) - spec.known_bugs()
    if unknown:
        print(f"unknown bug(s) {sorted(unknown)}; known: {sorted(spec.known_bugs())}", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    verbose = print if args.verbose else None
    expect_failure = bool(args.bug)
    started = time.process_time()
    passed = failed = undecided = 0
    caught: RunResult | None = None
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            result = run_seed(seed, config, verbose)
        except EngineConfigError as err:
            print(f"seed {seed}: the engine refuses this configuration: {err}", file=sys.stderr)
            return 2
        if args.history:
            dump_jsonl(result.history, args.history)
        if args.verbose or result.failed:
            print(result.summary())
        if result.failed:
            failed += 1
            if not expect_failure:
                print(f"  replay: {replay_command(seed, config)}")
                if result.linearizability is not None:
                    for line in result.linearizability.explain().splitlines():
                        print(f"  {line}")
                for line in result.trace_tail[-8:]:
                    print(f"  | {line}")
            if expect_failure:
                caught = result
                break
        else:
            passed += 1
            if result.linearizability is not None and result.linearizability.verdict is Verdict.UNKNOWN:
                undecided += 1
                print(f"seed {seed}: linearizability undecided (search bound hit); replay: {replay_command(seed, config)}")
    cpu = time.process_time() - started
    tail = f" ({undecided} undecided)" if undecided else ""
    print(f"{passed} passed, {failed} failed{tail} in {cpu:.1f}s cpu")
    if expect_failure:
        if caught is None:
            print(f"bug {sorted(config.bugs)} NOT caught in {passed} seeds")
            return 1
        print(f"bug {sorted(config.bugs)} caught by seed {caught.seed} (after {passed + 1} seeds)")
        print(f"  replay: {replay_command(caught.seed, config)}")
        return 0
    return 1 if failed else 0
