"""moesim: an analytical performance simulator for serving Mixture-of-Experts and dense transformers.

The public Python API is `simulator.api` (its `__all__`), re-exported here: `simulator.load`, `simulator.run`,
`simulator.compare`, `simulator.serve` and their result types. Everything else may change without notice.
The names are imported on first use, so that `import simulator.config` (and the command line) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The public names: the one list, which simulator.api takes as its __all__ (add a name here when the API gains one).
__all__ = [
    "DEFAULT_DECODE_SAMPLE",
    "CompareResult",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "ServeResult",
    "compare",
    "load",
    "run",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # By name, not an import statement: type checkers of the core stages do not follow it into the API.
        return getattr(importlib.import_module("simulator.api"), name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
