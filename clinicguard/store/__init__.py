"""Storage: the database engine and tenant-scoped transactions, the key-value seam."""
