"""Test plugins installed as a real distribution, so entry-point loading is exercised for real."""
