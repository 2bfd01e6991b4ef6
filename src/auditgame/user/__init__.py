"""Auditing a model of one's own: the user's model (``model``), spec file (``spec``) and the
audit that runs one auditor on them (``audit``)."""
