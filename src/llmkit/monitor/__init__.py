"""Monitoring of a running server: the request log (SQLite or JSON lines, `store`), prompt drift against the
training data (`drift`), and the summaries `llmkit monitor` prints and plots (`report`). A shared service: it
imports only the core; serve/ writes to it and exports its drift score."""
