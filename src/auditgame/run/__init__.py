"""Executors: how a game's (organism, auditor) pairs get run."""
