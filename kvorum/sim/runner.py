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
import sys
import time
from typing import Callable, Iterable

from kvorum.sim import engines
from kvorum.sim.history import dump_jsonl
from kvorum.sim.linearizability import Verdict
from kvorum.sim.world import PROFILES, RunResult, SimConfig, World, profile_config


def run_seed(seed: int, config: SimConfig, verbose: Callable[[str], None] | None = None) -> RunResult:
    return World(seed, config, verbose).run()


def replay_command(seed: int, config: SimConfig) -> str:
    parts = [f"python -m kvorum.sim --engine {config.engine} --seed {seed}"]
    base = profile_config(config.profile)
    if config.profile != "default":
        parts.append(f"--profile {config.profile}")
    if config.steps != base.steps:
        parts.append(f"--steps {config.steps}")
    if config.nodes != base.nodes:
        parts.append(f"--nodes {config.nodes}")
    if config.lease_reads != base.lease_reads:
        parts.append(f"--lease-reads {config.lease_reads}")
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvorum.sim", description="deterministic consensus simulator")
    p.add_argument("--engine", default="raft", choices=engines.names())
    p.add_argument("--seeds", type=int, default=1, help="how many seeds to run (from --seed on)")
    p.add_argument("--seed", type=int, default=0, help="first seed (alone: replay this seed)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES), help="a named set of fault knobs")
    p.add_argument("--steps", type=int, help="events per seed (default: the profile's)")
    p.add_argument("--nodes", type=int, choices=(3, 5), help="initial voters (default: the profile's)")
    p.add_argument("--bug", action="append", default=[], help="run the engine with this deliberate bug")
    p.add_argument("--lease-reads", choices=("on", "off", "mixed"), help="default: the profile's")
    p.add_argument("--history", help="with one seed: write its client history here as JSONL")
    p.add_argument("-v", "--verbose", action="store_true", help="print one line per event")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = engines.get(args.engine)
    unknown = set(args.bug) - spec.known_bugs()
    if unknown:
        print(f"unknown bug(s) {sorted(unknown)}; known: {sorted(spec.known_bugs())}", file=sys.stderr)
        return 2
    overrides = {"steps": args.steps, "nodes": args.nodes, "lease_reads": args.lease_reads}
    config = profile_config(
        args.profile,
        engine=args.engine,
        bugs=frozenset(args.bug),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    verbose = print if args.verbose else None
    expect_failure = bool(args.bug)
    started = time.process_time()
    passed = failed = undecided = 0
    caught: RunResult | None = None
    for seed in range(args.seed, args.seed + args.seeds):
        result = run_seed(seed, config, verbose)
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
