"""An example auditgame plugin: one auditor (``patch_search``) and one attack (``grating``).

Importing this package registers both; the ``auditgame.plugins`` entry point in
``pyproject.toml`` names it, so an installed copy is loaded wherever auditgame looks up a
name (the CLI, worker processes).
"""

from auditgame_example.grating import Grating
from auditgame_example.patch_search import PatchSearch

__all__ = ["Grating", "PatchSearch"]
