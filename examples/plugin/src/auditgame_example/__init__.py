"""An example auditgame plugin: one auditor (``patch_search``) and one attack (``grating``)
for the image track, and a whole track of its own (``linf``): a violation kind, its attack
and its auditor.

Importing this package registers all of them; the ``auditgame.plugins`` entry point in
``pyproject.toml`` names it, so an installed copy is loaded wherever auditgame looks up a
name (the CLI, worker processes).
"""

from auditgame_example.grating import Grating
from auditgame_example.linf import LinfKind, LinfSearch, LinfShiftAttack
from auditgame_example.patch_search import PatchSearch

__all__ = ["Grating", "LinfKind", "LinfSearch", "LinfShiftAttack", "PatchSearch"]
