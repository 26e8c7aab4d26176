"""partguard: keep PostgreSQL range-partitioned tables healthy."""

__version__ = "0.1.0"
