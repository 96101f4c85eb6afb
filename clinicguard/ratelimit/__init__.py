"""Rate limiting: sliding-window limits in the shared key-value backend."""
