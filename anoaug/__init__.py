"""anoaug."""
