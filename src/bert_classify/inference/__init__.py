"""inference: see the modules of this package."""
