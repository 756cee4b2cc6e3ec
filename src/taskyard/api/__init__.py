"""The HTTP API (FastAPI). Routes translate HTTP to `Coordinator` calls and back; no rules here."""
