"""The text track's dynamic baselines: they see run-time traffic and answer an easier
question."""
