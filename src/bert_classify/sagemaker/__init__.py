"""sagemaker: see the modules of this package."""
