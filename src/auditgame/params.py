"""Parameters are data: every attack and auditor can be rebuilt from a dict.

As in scikit-learn, hyperparameters are keyword arguments of ``__init__`` stored under their
own names; ``get_params`` reads them back, so a store row or a sweep can say exactly what ran.
"""

from __future__ import annotations

import inspect
from typing import Any


class Configurable:
    """Mixin: ``get_params``, ``clone`` and a ``__repr__`` built from ``__init__``'s keywords."""

    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def clone(self, **changes: Any) -> Configurable:
        return type(self)(**{**self.get_params(), **changes})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
