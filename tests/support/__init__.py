"""Helpers shared by several test modules (documented; imported as ``support.<module>``)."""
