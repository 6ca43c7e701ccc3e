"""CLI commands of the sagemaker package (placeholder until that work lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's commands to the CLI."""
