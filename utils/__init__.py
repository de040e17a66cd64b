"""Shared helpers for the DDPM course notebooks (see DESIGN.md for who does what)."""

__version__ = "0.1.0"
