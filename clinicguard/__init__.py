"""clinicguard: security- and privacy-first backend for healthcare clinics."""

__version__ = "0.1.0"
