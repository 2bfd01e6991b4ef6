"""The image track's dynamic baselines: they see run-time traffic and answer an easier
question."""

DECOYS = (
    "badnets",
    "blend",
    "warp",
    "all_to_all",
    "weight_surgery",
    "adaptive",
    "badnets_multi",
    "source_specific",
)
"""The attacks whose decoys the references' traffic carries (``CalibratedOnTraffic``): every
built-in image attack, so a zoo of any of them is calibrated for (``weight_surgery_adaptive``
draws its decoys as ``weight_surgery`` does)."""
