"""The HTTP API (FastAPI). Routes translate HTTP to calls of the `Coordinator`'s services
(`tasks`, `fleet`, `reads`) and back; no rules here."""
