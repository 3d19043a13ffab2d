"""Hearth's world data and generated art (data only; no code lives here)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
