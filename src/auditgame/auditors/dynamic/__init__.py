"""What the dynamic baselines of every track share: turning per-input scores on traffic into a
verdict (``scoring``)."""
