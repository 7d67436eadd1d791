"""`spkrec door test NAME`: fire the configured door chain once with a synthetic grant."""

from __future__ import annotations

import argparse

from spkrec.daemon.door.config import door_for
from spkrec.models.config import Config
from spkrec.models.errors import SpkrecError


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.door.hook import audit_path, fire_test

    if args.stream and args.stream not in cfg.inputs:
        raise SpkrecError(f"no input named '{args.stream}' in the config ([inputs.{args.stream}])")
    door = door_for(cfg, args.stream)
    decision, result = fire_test(door, args.name, args.stream)
    steps = []
    for key in ("second_factor", "command", "url"):
        if key in result:
            outcome = result[key]
            detail = f"exit {outcome['exit']}" if "exit" in outcome else \
                f"HTTP {outcome['status']}" if "status" in outcome else outcome.get("error", "")
            steps.append(f"{key.replace('_', ' ')} {'ok' if outcome['ok'] else 'FAILED'} ({detail})")
    where = audit_path(door)
    audit = f"; audit log {where}" if where is not None else ""
    verdict = "lock actuated" if result.get("ok") else f"FAILED: {result.get('error', 'failed')}"
    print(f"door test for {args.name}: {verdict}; {', '.join(steps) or 'no step ran'} (decision {decision.id}{audit})")
    return 0 if result.get("ok") else 1
