"""Core: what every layer shares and that imports nothing else of clinicguard."""
