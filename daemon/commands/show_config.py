"""`spkrec config`: the configuration in force, and where each value came from."""

from __future__ import annotations

import argparse
from pathlib import Path

from spkrec.models import __version__
from spkrec.models.config import FLAG, Config


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.config import candidates, to_toml

    if not args.plain:
        searched = [str(path) for _, path, _ in candidates(args.config) if path is not None]
        print(f"# spkrec {__version__}: the packaged defaults"
              + (f", merged with {cfg.file}" if cfg.file else " (no config file found)")
              + (", and command-line flags" if FLAG in cfg.origins.values() else ""))
        print(f"# looked for: {', '.join(s for s in searched if s)} (the first that exists is used)")
        stray = Path("config.toml")
        if stray.is_file() and (cfg.file is None or stray.resolve() != cfg.file.resolve()):
            print(f"# ./config.toml is not read from the working directory; pass --config {stray} to use it")
        print()
    print(to_toml(cfg, origins=not args.plain), end="")
    return 0
